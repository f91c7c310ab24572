"""Money: the dated catalog, cap rows, the ledger, and every statement that reserves, settles or holds spend."""
