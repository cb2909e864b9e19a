"""The store: hive-partitioned Parquet files per cluster and hour, committed atomically.

layout: paths, partitions, locks, staging and publishing; writer: open files that batches stream
into; compact: merging small files and retention.
"""
