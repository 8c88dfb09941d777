"""The search page served at ``/``: a text box and an image upload; results as thumbnails with their scores."""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vlmo search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
  form { display: flex; gap: .5rem; flex-wrap: wrap; align-items: center; margin-bottom: 1rem; }
  input[type=text] { flex: 1 1 20rem; padding: .5rem; font-size: 1rem; }
  button { padding: .5rem 1rem; font-size: 1rem; }
  #status { color: #666; margin: .5rem 0; min-height: 1.2em; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 1rem; }
  .hit { border: 1px solid #ddd; border-radius: 6px; padding: .5rem; text-align: center; font-size: .85rem; }
  .hit img { max-width: 160px; max-height: 160px; display: block; margin: 0 auto .3rem; }
  .score { font-weight: bold; }
  .name { color: #555; word-break: break-all; }
</style>
</head>
<body>
<h1>vlmo search</h1>
<form id="text-form">
  <input type="text" id="query" name="text" placeholder="describe an image, e.g. a red circle on the left" autofocus>
  <label>top <input type="number" id="top-k" value="8" min="1" max="100" style="width:4rem"></label>
  <button type="submit" id="search-button">Search</button>
</form>
<form id="image-form">
  <input type="file" id="image" name="image" accept="image/*">
  <button type="submit" id="image-button">Search with this image</button>
</form>
<div id="status"></div>
<div id="results"></div>
<script>
const results = document.getElementById("results");
const statusLine = document.getElementById("status");
function topK() { return parseInt(document.getElementById("top-k").value || "8", 10); }
function show(data) {
  results.replaceChildren();
  for (const hit of data.results) {
    const card = document.createElement("div");
    card.className = "hit";
    if (hit.thumbnail) {
      const img = document.createElement("img");
      img.src = hit.thumbnail; img.alt = hit.path; card.appendChild(img);
    }
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = "#" + hit.rank + "  " + hit.score.toFixed(4);
    card.appendChild(score);
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = hit.path ? hit.path.split("/").pop() : hit.line + ": " + hit.text;
    card.appendChild(name);
    results.appendChild(card);
  }
  statusLine.textContent = data.results.length + " results in " + data.took_ms + " ms (index of " + data.index.size + ")";
}
async function ask(init) {
  statusLine.textContent = "searching...";
  const response = await fetch("/search", init);
  const data = await response.json();
  if (!response.ok) { results.replaceChildren(); statusLine.textContent = "error: " + data.error; return; }
  show(data);
}
document.getElementById("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  ask({method: "POST", headers: {"content-type": "application/json"},
       body: JSON.stringify({text: document.getElementById("query").value, top_k: topK()})});
});
document.getElementById("image-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = document.getElementById("image").files[0];
  if (!file) { statusLine.textContent = "choose an image first"; return; }
  const body = new FormData();
  body.append("image", file); body.append("top_k", String(topK()));
  ask({method: "POST", body});
});
const initial = new URLSearchParams(location.search).get("q");
if (initial) { document.getElementById("query").value = initial; document.getElementById("search-button").click(); }
</script>
</body>
</html>
"""
