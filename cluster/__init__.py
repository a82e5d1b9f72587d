"""Cluster backends (etcd, Kafka, Cassandra) behind node.ports interfaces."""
