"""FastAPI: maps HTTP to workflow start / update / signal / query and read-model queries."""
