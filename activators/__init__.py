"""Activators that export audiences to marketing channels (email, Facebook, Google Ads)."""
