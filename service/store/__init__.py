"""Stores for readings (see ``base.Store``) and the durable spool in front of them."""
