"""Error types whose message is one line a user can act on (the CLI prints it and exits 2)."""


class FlowpipeError(Exception):
    """Base of errors shown to users as one line."""


class StoreError(FlowpipeError):
    """A store problem: missing store, disk full, unreadable file."""


class QueryError(FlowpipeError):
    """SQL that DuckDB refused or could not run."""


class ConfigError(FlowpipeError):
    """A bad command-line value or configuration file."""


class InputError(FlowpipeError):
    """Malformed input data (names the file and line)."""


class RuleError(FlowpipeError):
    """A rule file that cannot be used: bad format or refused SQL (names file:line and rule)."""


class FilterError(FlowpipeError):
    """A FlowFilter flowpipe cannot honour exactly (bad pattern, unsupported field)."""
