"""asv benchmark suite of moebench (see asv.conf.json and ``moebench.suite``)."""
