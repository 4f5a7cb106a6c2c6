"""Numbers -> pictures: the Streamlit explorer of a task library (read-only, never trains).

- ``store``: read-only, cached access to a library file (DuckDB).
- ``figures``: pure functions from data frames to Plotly figures, one template and family colours.
- ``export``: PNG/SVG through kaleido and the local Chromium; the figure pack.
- ``state``: view state in session state and the URL.
- ``ui``: page parts shared by every page (library chooser, figure with export buttons).
- ``upload``: a user's task embedded with the library's settings and placed on its maps.
- ``pages/``: one script per page, registered in ``app.py``.
"""
