"""The zero-trust lab guide simulated (two clusters, five stages), and `flowpipe demo`.

generate: stages and variants as hubble jsonpb; cluster, datapath, traffic, scenarios: the
simulated clusters, Cilium's datapath events, client traffic and the guide's commands; demo:
the whole pipeline on loopback.
"""
