"""hivepbx node: the PBX application server and the sans-I/O protocol core it shares with the SBC."""
