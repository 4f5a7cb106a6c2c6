"""TASK2VEC explorer: `streamlit run app.py [-- --db FILE]` (or TASK2VEC_DB=FILE).

Page registration and the library path only; the pages live in explorer/pages/.
"""
from pathlib import Path

import streamlit as st

from explorer import state, ui

# A local favicon: a Material icon here would be fetched from fonts.gstatic.com (offline: fails).
FAVICON = Path(__file__).resolve().parent / "explorer" / "assets" / "favicon.png"
st.set_page_config(page_title="TASK2VEC explorer", page_icon=str(FAVICON), layout="wide")
state.init()  # library from the URL, --db, TASK2VEC_DB or data/demo.duckdb

pages = [
    st.Page("explorer/pages/task_map.py", title="Task map", icon=":material/scatter_plot:",
            default=True),  # the default page is served at the root URL
    st.Page("explorer/pages/taxonomy.py", title="Taxonomy", icon=":material/account_tree:",
            url_path="taxonomy"),
    st.Page("explorer/pages/difficulty.py", title="Difficulty", icon=":material/trending_up:",
            url_path="difficulty"),
    st.Page("explorer/pages/model_selection.py", title="Model selection",
            icon=":material/leaderboard:", url_path="selection"),
    st.Page("explorer/pages/upload.py", title="Upload a task", icon=":material/upload:",
            url_path="upload"),
]
page = st.navigation(pages)
pack = ui.sidebar()
try:
    page.run()
finally:  # also after st.stop(): the URL and the figure pack follow what the page showed
    state.write_url()
    ui.figure_pack_button(pack)
    ui.prefetch()
