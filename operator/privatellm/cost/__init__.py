"""GPU spend from what really ran (layer 2): the ledger of serving Pods' runs, and prices.

Pure: Pods, nodes and budgets in, runs and amounts out. The controllers keep the ledger
in the cluster (controllers/ledger.py) and write each CostBudget's status
(controllers/budget.py); the report (report.py) prices the same ledger for
`privatellm cost report`.
"""
