"""Human output: text tables (here), HTML reports and plots (added by the optimize issue)."""
