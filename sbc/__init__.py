"""The SBC: the edge that faces the internet."""
