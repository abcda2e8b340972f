"""Venue adapters (the built-in simulator, later HTTP EMS and FIX) behind one small interface."""
