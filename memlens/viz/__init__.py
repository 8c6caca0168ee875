"""Figures (plotly), attention views (circuitsvis) and the HTML report; all work offline."""
