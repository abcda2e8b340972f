"""Pure domain: types, the order status table, compliance rules, approvals, allocation, settlement.

Nothing here does I/O, reads the environment or imports sqlmodel, so workflows may use it freely.
"""
