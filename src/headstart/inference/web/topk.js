// The top-k bars of one prediction, shared by the served page (serve/static) and the web export's page: a
// classic script, so that it loads from file:// as well as from the server.
globalThis.headstartPercent = (p) => `${(100 * p).toFixed(1)}%`;

globalThis.headstartTopK = function (list, topK) {
  list.replaceChildren();
  for (const [name, p] of topK) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.max(0.5, 100 * p)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "pct";
    value.textContent = headstartPercent(p);
    item.append(label, bar, value);
    list.append(item);
  }
};
