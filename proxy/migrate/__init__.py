"""Bulk paths between the two stores: backfill, verify and reconcile."""
