"""The wire schemas (pydantic), one module per family; money is a decimal string on the wire, never a float."""
