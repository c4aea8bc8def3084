"""Media features: the catalog, taste profiles, recommendations, content and games."""
