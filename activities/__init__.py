"""Every side effect of an order: read-model projections, compliance data, venue and back-office calls."""
