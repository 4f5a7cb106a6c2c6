// Linked selection on the task maps, drawn in the browser.
//
// The maps are sent once per colouring and do not change with the selection (explorer/link.py).
// This module, mounted with the selected task ids, draws a ring around each selected task on
// every map and dims the maps' task traces. It touches no Plotly data: a ring is an SVG circle
// placed with the axes' own data-to-pixel conversion, dimming is one CSS opacity per trace
// group, so a selection costs the browser a few DOM nodes instead of redrawing 1,500-point maps.
// Rings are placed again after every redraw of a map (zoom, pan, new colouring, resize), and
// drawn as soon as a map reports a selection; the server's rerun then confirms the same ids.

const SVG = "http://www.w3.org/2000/svg";
const DIM = "0.35";
const state = window.__task2vecLink || (window.__task2vecLink = { ids: [], charts: [] });

function graphDiv(key) {
  return document.querySelector(`.st-key-${key} .js-plotly-plot`);
}

function draw(gd) {
  const layout = gd._fullLayout;
  const full = gd._fullData;
  const layer = gd.querySelector(".main-svg .cartesianlayer");
  if (!layout || !full || !layout.xaxis || !layer) return false;
  const wanted = new Set(state.ids);
  const xa = layout.xaxis, ya = layout.yaxis;
  const rings = [];
  for (const t of full) {
    if (t.meta !== "tasks" || t.visible !== true) continue; // legend-hidden traces: no group
    const group = gd.querySelector(`.scatterlayer .trace${t.uid}`);
    if (group) group.style.opacity = wanted.size ? DIM : "";
    const cd = t.customdata || [];
    for (let i = 0; i < cd.length; i++) {
      if (!wanted.has(cd[i][0])) continue;
      const x = xa._offset + xa.d2p(t.x[i]), y = ya._offset + ya.d2p(t.y[i]);
      const inside = x >= xa._offset && x <= xa._offset + xa._length &&
        y >= ya._offset && y <= ya._offset + ya._length;
      if (inside) rings.push([cd[i][0], x, y, t.marker.size]); // zoomed out of view: no ring
    }
  }
  let overlay = gd.querySelector("svg.main-svg g.task2vec-rings");
  if (!overlay) {
    overlay = document.createElementNS(SVG, "g");
    overlay.setAttribute("class", "task2vec-rings");
    overlay.style.pointerEvents = "none"; // hover and clicks go to the points underneath
    layer.parentNode.insertBefore(overlay, layer.nextSibling);
  }
  overlay.replaceChildren(...rings.map(([id, x, y, size]) => {
    const c = document.createElementNS(SVG, "circle");
    c.setAttribute("cx", x);
    c.setAttribute("cy", y);
    c.setAttribute("r", (typeof size === "number" ? size : 8) / 2 + 5);
    c.setAttribute("fill", "none");
    c.setAttribute("stroke", "#111111");
    c.setAttribute("stroke-width", "2.5");
    c.setAttribute("data-task", id);
    return c;
  }));
  return true;
}

function drawAll() {
  for (const key of state.charts) {
    const gd = graphDiv(key);
    if (gd && gd.__task2vecLinked) draw(gd);
  }
}

// A click (or box, lasso, shift-click) on a map rings the tasks on every map at once, without
// waiting for the server's rerun, which then sends the same ids (and opens the card).
function selected(event) {
  const points = (event && event.points) || [];
  const ids = points.filter((p) => p.data && p.data.meta === "tasks").map((p) => p.customdata[0]);
  if (!ids.length) return; // a deselect: the server keeps the selection, and so do the rings
  state.ids = [...new Set(ids)];
  drawAll();
}

function link(gd) {
  if (gd.__task2vecLinked || !gd._fullLayout || !gd.on) return; // not drawn by Plotly yet
  gd.__task2vecLinked = true;
  gd.on("plotly_afterplot", () => draw(gd)); // zoom, pan, resize, new figure
  gd.on("plotly_selected", selected);
  draw(gd);
}

function scan() {
  for (const key of state.charts) {
    const gd = graphDiv(key);
    if (gd) link(gd);
  }
}

// Streamlit replaces a chart's element when its figure changes (a new colouring): link every
// new graph div as it appears. The check is two selector lookups per DOM change.
if (!state.observer) {
  state.observer = new MutationObserver(scan);
  state.observer.observe(document.body, { childList: true, subtree: true });
}

export default function (component) {
  const { data } = component;
  state.ids = (data && data.ids) || [];
  state.charts = (data && data.charts) || [];
  drawAll();
  scan();
}
