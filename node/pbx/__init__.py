"""PBX application: registrar, B2BUA call control, CDRs."""
