"""Pictures: per-image panels, contact sheets and the HTML report."""
