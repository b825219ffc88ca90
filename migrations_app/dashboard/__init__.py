"""The plan dashboard and the migration report: views, reads (selectors and their parts),
charts, and the window cache."""
