// retrain dashboard: live refresh, the API key for buttons, and "try it". Written here.
"use strict";
(function () {
  const live = document.getElementById("live");
  const keyInput = document.getElementById("api-key");
  if (keyInput) keyInput.value = sessionStorage.getItem("retrain-key") || "";
  const key = () => (keyInput ? keyInput.value.trim() : "");
  if (keyInput) keyInput.addEventListener("change", () => sessionStorage.setItem("retrain-key", key()));
  const say = (text) => { const out = document.getElementById("action-result"); if (out) out.textContent = text; };

  async function refresh() {
    if (document.hidden || !live) return;
    try {
      const answer = await fetch(location.href, { headers: { "X-Fragment": "1" } });
      if (!answer.ok) return;
      // what a reader unfolded stays unfolded (a decision's figures)
      const open = [...live.querySelectorAll("details[open][id]")].map((d) => d.id);
      live.innerHTML = await answer.text();
      for (const id of open) { const d = document.getElementById(id); if (d) d.open = true; }
    } catch (e) { /* the next tick tries again */ }
  }
  if (live && live.innerHTML.trim()) setInterval(refresh, 2000);

  async function post(path, body) {
    if (!key()) { say("This needs an API key (one of RETRAIN_API_KEYS): type it above."); return null; }
    const answer = await fetch(path, {
      method: "POST", body: body ? JSON.stringify(body) : null,
      headers: { "Authorization": "Bearer " + key(), "Content-Type": "application/json" } });
    const data = await answer.json();
    if (!answer.ok) { say("Refused (" + answer.status + "): " + data.error); return null; }
    return data;
  }

  const rollback = document.getElementById("rollback");
  if (rollback) rollback.addEventListener("click", async () => {
    const done = await post("/api/rollback");
    if (done) { say("Rolled back: " + done.decision.reason); refresh(); }
  });
  document.addEventListener("click", async (e) => {
    const button = e.target.closest("button.replay");
    if (!button) return;
    const done = await post("/api/dead-letters/replay", { stream: button.dataset.stream, id: button.dataset.id });
    if (done) { say("Replayed " + done.replayed.join(", ")); refresh(); }
  });

  const pad = document.getElementById("pad");
  if (!pad) return;
  const ctx = pad.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height); };
  clear();
  let drawing = false;
  const dot = (e) => {
    const r = pad.getBoundingClientRect();
    ctx.fillStyle = "#fff"; ctx.beginPath();
    ctx.arc(e.clientX - r.left, e.clientY - r.top, 12, 0, 2 * Math.PI); ctx.fill();
  };
  pad.addEventListener("pointerdown", (e) => { drawing = true; dot(e); });
  pad.addEventListener("pointermove", (e) => { if (drawing) dot(e); });
  window.addEventListener("pointerup", () => { drawing = false; });
  document.getElementById("clear").addEventListener("click", () => { clear(); document.getElementById("image").value = ""; });

  const fileAsBase64 = (file) => new Promise((ok, fail) => {
    const reader = new FileReader();
    reader.onload = () => ok(String(reader.result).split(",")[1]);
    reader.onerror = fail; reader.readAsDataURL(file);
  });
  const padAsBase64 = () => {
    const small = document.createElement("canvas"); small.width = 28; small.height = 28;
    small.getContext("2d").drawImage(pad, 0, 0, 28, 28);
    return small.toDataURL("image/png").split(",")[1];
  };
  document.getElementById("predict").addEventListener("click", async () => {
    const out = document.getElementById("prediction");
    const file = document.getElementById("image").files[0];
    const b64 = file ? await fileAsBase64(file) : padAsBase64();
    const answer = await fetch("/api/predict", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ instances: [{ image_bytes: { b64: b64 } }] }) });
    const data = await answer.json();
    out.textContent = "";
    if (!answer.ok) { out.textContent = "The model server answered " + answer.status + ": " + (data.error || JSON.stringify(data)); return; }
    const names = Array.from(document.querySelectorAll("#classes li")).map((li) => li.textContent);
    const probs = data.predictions[0];
    const best = probs.indexOf(Math.max(...probs));
    const table = document.createElement("table");
    probs.forEach((p, i) => {
      const row = table.insertRow(); row.insertCell().textContent = names[i];
      row.insertCell().textContent = p.toFixed(3);
      if (i === best) row.className = "best";
    });
    const head = document.createElement("p");
    head.id = "predicted";
    head.textContent = "predicted " + names[best] + " (p=" + probs[best].toFixed(3) + ") by model version " + (answer.headers.get("x-model-version") || "?");
    out.append(head, table);
  });
})();
