"""The read model: SQLModel tables, engine, queries. Written only by activities (and the demo seed)."""
