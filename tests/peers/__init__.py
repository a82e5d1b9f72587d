"""Real SIP peers (SIPp, baresip) driven from the tests, on loopback, always bounded in time."""
