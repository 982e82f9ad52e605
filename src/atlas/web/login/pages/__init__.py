"""The /login pages, one module per page of the guide's menu."""
