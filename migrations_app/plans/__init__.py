"""Plans: the lifecycle services (one compare-and-set transition each), creation and edits,
the pure phase rules, the start checks, plan reads and the model catalog."""
