"""Generator families (DESIGN §3): one file each, one interface (:mod:`.base`)."""
