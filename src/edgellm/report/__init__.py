"""Human output: terminal tables (``table``), the optimize HTML report (``html``) and its Pareto plots (``plots``)."""
