// The trace viewer of the rationalyst gateway. Plain JavaScript, nothing fetched from elsewhere.
//
// Every piece of model or user text reaches the page through text nodes (el() below turns
// strings into document.createTextNode; attributes are set with setAttribute, never event
// handlers or URLs): a candidate containing <script> shows as that text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const HEURISTICS = ["rationalyst", "rationalyst_explicit", "likelihood", "random", "greedy"];
  const STRATEGIES = ["step", "self_improve"];
  const KEY_STORE = "rationalyst.apiKey";

  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    append(node, children);
    return node;
  }
  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }
  const fmt = (x, digits = 3) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));
  const ms = (x) => (x === null || x === undefined ? "—" : `${Math.round(x)} ms`);

  // -- state ----------------------------------------------------------------------------------

  /** A run: {id, label, question, steps: StepTrace[], rounds, nodes: TreeNode[] (streamed),
   *  response: ReasonResponse|null, state: "running"|"done"|"error", error: string|null}. */
  const runs = [];
  let current = null;
  let controller = null;

  function newRun(label, question) {
    const run = {
      id: `run${runs.length + 1}`, label, question, steps: [], rounds: [], nodes: [],
      response: null, state: "running", error: null,
    };
    runs.push(run);
    return run;
  }
  function runFromResponse(response, label) {
    const run = newRun(label, response.question);
    finish(run, response);
    return run;
  }
  function finish(run, response) {
    run.response = response;
    run.steps = response.trace || [];
    run.rounds = response.rounds || [];
    run.state = "done";
  }

  // -- status line ----------------------------------------------------------------------------

  function status(kind, ...parts) {
    const box = clear($("status"));
    if (!kind) return;
    const msg = el("div", { class: `msg ${kind}`, "data-kind": kind });
    if (kind === "running") msg.appendChild(el("span", { class: "spinner", "aria-hidden": "true" }));
    append(msg, parts);
    box.appendChild(msg);
  }
  function errorText(body, httpStatus) {
    const e = body && body.error;
    if (e && typeof e === "object") {
      const field = e.field || e.param;
      return `${e.type || "error"}${httpStatus ? ` (HTTP ${httpStatus})` : ""}: ${e.message || ""}${field ? ` [${field}]` : ""}`;
    }
    return `HTTP ${httpStatus}`;
  }

  // -- HTTP -----------------------------------------------------------------------------------

  function headers(json) {
    const h = {};
    const key = $("api-key").value.trim();
    if (key) h.Authorization = `Bearer ${key}`;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }
  async function readJson(response) {
    try { return await response.json(); } catch (_) { return null; }
  }

  /** Server-sent events of a fetch body: calls onEvent(name, data) per event. */
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }

  // -- asking ---------------------------------------------------------------------------------

  function requestBody() {
    const body = {
      question: $("question").value,
      heuristic: $("heuristic").value,
      strategy: $("strategy").value,
      stream: true,
    };
    for (const name of ["n_candidates", "max_steps", "max_step_tokens", "seed"]) {
      const v = $(name).value.trim();
      if (v !== "") body[name] = parseInt(v, 10);
    }
    const t = $("temperature").value.trim();
    if (t !== "") body.temperature = parseFloat(t);
    if ($("trace_tokens").checked) body.trace_tokens = true;
    const extra = $("extra").value.trim();
    if (extra) {
      const parsed = JSON.parse(extra); // a SyntaxError is reported by the caller
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw new SyntaxError("more options must be a JSON object");
      }
      Object.assign(body, parsed);
    }
    return body;
  }

  async function ask(event) {
    event.preventDefault();
    let body;
    try {
      body = requestBody();
    } catch (exc) {
      status("error", `options: ${exc.message}`);
      return;
    }
    const run = newRun(`${body.heuristic} · ${body.question.slice(0, 40)}`, body.question);
    current = run;
    renderRuns();
    showRun(run);
    status("running", "searching… steps appear as they are chosen");
    $("run").disabled = true;
    $("cancel").disabled = false;
    controller = new AbortController();
    let requestId = null;
    try {
      const response = await fetch("/v1/reason", {
        method: "POST", headers: headers(true), body: JSON.stringify(body), signal: controller.signal,
      });
      requestId = response.headers.get("x-request-id");
      run.requestId = requestId;
      if (!response.ok) {
        fail(run, errorText(await readJson(response), response.status));
        return;
      }
      await readEvents(response.body, (name, data) => onEvent(run, name, data));
      if (run.state === "running") {
        fail(run, "the stream ended without a response (the gateway went away?)");
      }
    } catch (exc) {
      if (run.state === "running") {
        fail(run, exc.name === "AbortError" ? "stopped here (the page cancelled the request)" : `connection lost: ${exc.message}`);
      }
    } finally {
      controller = null;
      $("run").disabled = false;
      $("cancel").disabled = true;
      renderRuns();
    }
  }

  async function cancel() {
    const run = current;
    if (!run || run.state !== "running") return;
    if (run.requestId) {
      // the search answers with its steps so far (cancelled: true) on the open stream
      const r = await fetch(`/v1/reason/${encodeURIComponent(run.requestId)}/cancel`, {
        method: "POST", headers: headers(false),
      }).catch(() => null);
      if (r && r.ok) return;
    }
    if (controller) controller.abort();
  }

  function fail(run, message) {
    run.state = "error";
    run.error = message;
    if (run === current) {
      status("error", "failed: ", message);
      renderSummary(run);
    }
    renderRuns();
  }

  function onEvent(run, name, data) {
    if (name === "step") {
      run.steps.push(data);
      if (run === current) {
        appendStep(run, data, true);
        renderTree(run);
        status("running", `searching… step ${data.index + 1} chosen`);
      }
    } else if (name === "round") {
      run.rounds.push(data);
      if (run === current) appendRound(data);
    } else if (name === "node" || (data && data.event === "node")) {
      run.nodes.push(data);
      if (run === current) renderTree(run);
    } else if (name === "done") {
      finish(run, data);
      if (run === current) {
        showRun(run);
        const trouble = (data.fallbacks || []).length ? ` — ${data.fallbacks.length} fallback(s), see the summary` : "";
        status("info", `done: ${data.finish}${trouble}`);
      }
      renderRuns();
    } else if (name === "error") {
      fail(run, errorText(data));
    }
  }

  // -- one run --------------------------------------------------------------------------------

  function showRun(run) {
    current = run;
    $("view").hidden = false;
    $("compare-view").hidden = true;
    renderSummary(run);
    renderTree(run);
    const steps = clear($("steps"));
    const fragment = document.createDocumentFragment();
    for (const step of run.steps) fragment.appendChild(stepCard(run, step, false));
    for (const round of run.rounds) fragment.appendChild(roundCard(round));
    steps.appendChild(fragment);
    renderRuns();
  }

  function renderSummary(run) {
    const box = clear($("summary"));
    const r = run.response;
    box.appendChild(el("h2", {}, "Summary"));
    const grid = el("dl", { class: "summary-grid" });
    const row = (k, ...v) => append(grid, [el("dt", {}, k), el("dd", {}, ...v)]);
    row("question", run.question || (r && r.question) || "");
    if (run.error) row("failure", el("span", { class: "bad", "data-testid": "failure" }, run.error));
    if (r) {
      row("answer", el("span", { class: "answer", "data-testid": "answer" }, r.answer === null ? "(none)" : r.answer));
      row("id", el("code", {}, r.id || "—"));
      row("finish", `${r.finish}${r.deadline_reached ? " (deadline)" : ""}${r.cancelled ? " (cancelled)" : ""}`);
      row("heuristic", r.heuristic_requested === r.heuristic_used ? r.heuristic_used : `${r.heuristic_requested} → ${r.heuristic_used}`);
      row("strategy", r.strategy || "step");
      row("answer kind", `${r.answer_kind} (${r.answer_kind_source}); demos: ${r.few_shot_source}`);
      row("seed", r.seed === null ? "—" : String(r.seed));
      row("time", `${ms(r.timings.total_ms)} total, ${ms(r.timings.model_ms)} in model services, ${ms(r.timings.overhead_ms)} gateway`);
      row("usage", usageTable(r.usage));
    } else if (run.state === "running") {
      row("state", "running");
    }
    box.appendChild(grid);
    if (r) {
      for (const f of r.fallbacks || []) {
        box.appendChild(el("div", { class: "fallback" },
          `fallback at step ${f.step + 1}: ${f.service} — ${f.from_heuristic} → ${f.to_heuristic}: ${f.reason}`));
      }
      for (const w of r.warnings || []) box.appendChild(el("div", { class: "warn" }, w));
    }
  }

  function usageTable(usage) {
    const table = el("table", { class: "usage" }, el("tr", {}, el("th", {}, "service"), el("th", {}, "calls"),
      el("th", {}, "prompt tokens"), el("th", {}, "completion tokens")));
    for (const [name, u] of Object.entries(usage || {})) {
      if (!u || typeof u !== "object" || !("calls" in u)) continue;
      table.appendChild(el("tr", {}, el("td", {}, name), el("td", { class: "num" }, u.calls),
        el("td", { class: "num" }, u.prompt_tokens ?? "—"), el("td", { class: "num" }, u.completion_tokens ?? "—")));
    }
    return table;
  }

  function appendStep(run, step, fresh) {
    $("steps").appendChild(stepCard(run, step, fresh));
  }
  function appendRound(round) {
    $("steps").appendChild(roundCard(round));
  }

  /** Ranks among the distinct scored candidates (1 = best). */
  function ranks(candidates) {
    const order = candidates
      .map((c, i) => ({ c, i }))
      .filter(({ c }) => c.duplicate_of === null && c.repeat_of === null && c.score !== null && c.score !== undefined)
      .sort((a, b) => b.c.score - a.c.score);
    const out = {};
    order.forEach(({ i }, r) => { out[i] = r + 1; });
    return out;
  }

  function stepCard(run, step, fresh) {
    const t = step.timings || {};
    const card = el("article", { class: `step${fresh ? " new" : ""}`, "data-step": step.index },
      el("header", {},
        el("span", { class: "idx" }, `Step ${step.index + 1}`),
        el("span", { class: "badge" }, step.heuristic),
        step.forced_answer ? el("span", { class: "badge" }, "forced answer") : null,
        el("span", { class: "chosen-text" }, step.step)),
      step.rationale ? el("p", { class: "rationale" }, "Rationale: ", step.rationale,
        step.rationale_logprob !== null && step.rationale_logprob !== undefined ? ` (mean log-prob ${fmt(step.rationale_logprob)})` : "") : null,
      el("div", { class: "timings" },
        `rationale ${ms(t.rationale_ms)} · propose ${ms(t.propose_ms)} · score ${ms(t.score_ms)} · model ${ms(t.model_ms)} · total ${ms(t.total_ms)}`));
    const cands = step.candidates || [];
    const merged = cands.filter((c) => c.duplicate_of !== null).length;
    const dropped = cands.filter((c) => c.repeat_of !== null).length;
    const details = el("details", { class: "candidates" },
      el("summary", {}, `${cands.length} candidates`, merged ? `, ${merged} duplicate(s) merged` : "",
        dropped ? `, ${dropped} repeat(s) dropped` : ""));
    // built when first opened: a 64-step, 16-candidate trace stays light
    details.addEventListener("toggle", () => {
      if (details.open && !details.dataset.built) {
        details.dataset.built = "1";
        details.appendChild(candidateTable(step));
      }
    });
    card.appendChild(details);
    for (const w of step.warnings || []) card.appendChild(el("div", { class: "warn" }, w));
    return card;
  }

  function candidateTable(step) {
    const cands = step.candidates || [];
    const rank = ranks(cands);
    const copies = {};
    cands.forEach((c) => { if (c.duplicate_of !== null) copies[c.duplicate_of] = (copies[c.duplicate_of] || 0) + 1; });
    const table = el("table", { class: "cands" },
      el("tr", {}, el("th", {}, "rank"), el("th", {}, "score"), el("th", {}, "candidate"), el("th", {}, "tokens"), el("th", {}, "")));
    cands.forEach((c, i) => {
      if (c.duplicate_of !== null) return; // merged into the row of its original
      const chosen = i === step.chosen;
      const notes = [];
      if (chosen) notes.push(el("span", { class: "badge chosen" }, "chosen"));
      if (copies[i]) notes.push(el("span", { class: "badge", title: "identical candidates merged into this one" }, `×${copies[i] + 1} merged`));
      if (c.repeat_of !== null) notes.push(el("span", { class: "badge" }, `repeats step ${c.repeat_of + 1}: dropped`));
      if (c.finish_reason === "length") notes.push(el("span", { class: "badge" }, "cut at max tokens"));
      table.appendChild(el("tr", { class: chosen ? "chosen" : c.repeat_of !== null ? "dropped" : "", "data-candidate": i },
        el("td", { class: "num" }, rank[i] ?? "—"),
        el("td", { class: "num" }, fmt(c.score)),
        el("td", { class: "cand-text" }, c.tokens ? tokenSpans(c.tokens) : c.text),
        el("td", { class: "num" }, c.num_tokens ?? "—"),
        el("td", {}, notes)));
    });
    return table;
  }

  /** A candidate's tokens coloured by probability under the scorer (red: unlikely, green: likely). */
  function tokenSpans(tokens) {
    const wrap = el("span", { class: "tokens" });
    for (const t of tokens) {
      const p = Math.exp(Math.max(-20, Math.min(0, t.logprob)));
      const span = el("span", { class: "tok", title: `log p = ${fmt(t.logprob)} (p = ${fmt(p, 2)})` }, t.token);
      span.style.backgroundColor = `hsl(${Math.round(120 * p)}, 75%, 82%)`;
      wrap.appendChild(span);
    }
    return wrap;
  }

  function roundCard(round) {
    return el("article", { class: "step", "data-round": round.index },
      el("header", {}, el("span", { class: "idx" }, `Round ${round.index + 1}`),
        round.correct === true ? el("span", { class: "badge chosen" }, "judged correct") : null,
        round.correct === false ? el("span", { class: "badge" }, "judged wrong") : null),
      el("pre", { class: "cand-text" }, round.answer),
      round.feedback ? el("p", { class: "rationale" }, `Feedback (${round.feedback_by || "?"}): `, round.feedback) : null,
      el("div", { class: "timings" }, `model ${ms(round.model_ms)} · total ${ms(round.total_ms)}`));
  }

  // -- the tree -------------------------------------------------------------------------------

  /** The search tree: the response's `tree` (or the streamed nodes) when there is one, else
   *  built from the step trace (the chosen path, and each step's other candidates pruned). */
  function treeNodes(run) {
    const r = run.response;
    if (r && Array.isArray(r.tree) && r.tree.length) return r.tree;
    if (run.nodes.length) return run.nodes;
    const nodes = [];
    let parent = null;
    for (const step of run.steps) {
      let chosenId = null;
      (step.candidates || []).forEach((c, i) => {
        if (c.duplicate_of !== null) return;
        const id = `s${step.index}c${i}`;
        const chosen = i === step.chosen;
        if (chosen) chosenId = id;
        nodes.push({ id, parent, depth: step.index, text: c.text, score: c.score, tokens: c.tokens, status: chosen ? "chosen" : "pruned" });
      });
      parent = chosenId;
    }
    return nodes;
  }

  function renderTree(run) {
    const box = clear($("tree"));
    const nodes = treeNodes(run);
    if (!nodes.length) {
      box.appendChild(el("p", { class: "legend" }, run.rounds.length ? "self-improvement has no step tree" : "no steps yet"));
      return;
    }
    const children = new Map();
    for (const n of nodes) {
      const key = n.parent ?? "";
      if (!children.has(key)) children.set(key, []);
      children.get(key).push(n);
    }
    // siblings first, the node the search went on from last (its subtree follows it)
    const order = { pruned: 0, finished: 1, kept: 2, chosen: 3 };
    // iterative, so that a 64-deep path does not recurse 64 calls per render
    const rootList = el("ul", {});
    const stack = [[rootList, ""]];
    while (stack.length) {
      const [list, key] = stack.pop();
      const kids = (children.get(key) || []).slice().sort((a, b) => (order[a.status] ?? 9) - (order[b.status] ?? 9));
      for (const n of kids) {
        const label = el("span", { class: `node ${n.status}`, title: n.text, "data-node": n.id },
          n.tokens ? tokenSpans(n.tokens) : n.text, el("span", { class: "score" }, n.aggregate !== null && n.aggregate !== undefined ? fmt(n.aggregate) : fmt(n.score)));
        const li = el("li", {}, label);
        list.appendChild(li);
        if (children.has(n.id)) {
          const sub = el("ul", {});
          li.appendChild(sub);
          stack.push([sub, n.id]);
        }
      }
    }
    box.appendChild(rootList);
  }

  // -- runs list and comparison ---------------------------------------------------------------

  function renderRuns() {
    const list = clear($("runs"));
    for (const run of runs) {
      const li = el("li", { class: run === current ? "current" : "", "data-run": run.id }, run.label,
        el("span", { class: `state ${run.state}` }, run.state === "error" ? "failed" : run.state));
      li.addEventListener("click", () => showRun(run));
      list.appendChild(li);
    }
    // A and B default to the last two runs until the user picks
    for (const [id, pick] of [["compare-a", runs.length - 2], ["compare-b", runs.length - 1]]) {
      const select = $(id);
      const before = select.value;
      clear(select);
      runs.forEach((run, i) => select.appendChild(el("option", { value: i }, `${i + 1}. ${run.label}`)));
      select.value = select.dataset.picked && before !== "" ? before : String(Math.max(0, pick));
    }
  }

  function compare(event) {
    event.preventDefault();
    const a = runs[Number($("compare-a").value)];
    const b = runs[Number($("compare-b").value)];
    if (!a || !b) {
      status("error", "compare: run or open two runs first");
      return;
    }
    const box = clear($("compare-view"));
    box.hidden = false;
    $("view").hidden = true;
    box.appendChild(el("h2", {}, "Compare"));
    const ra = a.response || {};
    const rb = b.response || {};
    const table = el("table", { class: "compare-grid" },
      el("tr", {}, el("th", {}, ""), el("th", {}, ""), el("th", {}, `A: ${a.label}`), el("th", {}, `B: ${b.label}`)));
    let differences = 0;
    const line = (label, va, vb, attrs) => {
      const diff = va !== vb;
      if (diff) differences += 1;
      table.appendChild(el("tr", { class: diff ? "diff" : "same", ...(attrs || {}) },
        el("td", { class: "mark", title: diff ? "differs" : "same" }, diff ? "≠" : ""),
        el("th", {}, label), el("td", { class: "run" }, va ?? "—"), el("td", { class: "run" }, vb ?? "—")));
    };
    line("question", a.question, b.question);
    line("answer", ra.answer ?? null, rb.answer ?? null, { "data-row": "answer" });
    line("heuristic", ra.heuristic_used ?? null, rb.heuristic_used ?? null);
    line("finish", ra.finish ?? a.state, rb.finish ?? b.state);
    const n = Math.max(a.steps.length, b.steps.length);
    for (let i = 0; i < n; i++) {
      const sa = a.steps[i];
      const sb = b.steps[i];
      line(`step ${i + 1}`, sa ? sa.step : null, sb ? sb.step : null, { "data-row": `step-${i}` });
    }
    box.appendChild(el("p", { "data-testid": "differences" }, `${differences} difference(s) over ${n} aligned step(s)`));
    box.appendChild(table);
    const back = el("button", { type: "button" }, "Back to the run");
    back.addEventListener("click", () => showRun(current || b));
    box.appendChild(back);
  }

  // -- opening past responses -----------------------------------------------------------------

  async function openTrace(event) {
    event.preventDefault();
    const id = $("trace-id").value.trim();
    if (!id) return;
    await openById(id);
  }

  async function openById(id) {
    status("running", `opening ${id}…`);
    try {
      const response = await fetch(`/v1/traces/${encodeURIComponent(id)}`, { headers: headers(false) });
      const body = await readJson(response);
      if (!response.ok) {
        status("error", `trace ${id}: `, errorText(body, response.status));
        return;
      }
      const run = runFromResponse(body, `trace ${id}`);
      showRun(run);
      status("info", `opened trace ${id}`);
    } catch (exc) {
      status("error", `trace ${id}: connection failed: ${exc.message}`);
    }
  }

  /** Records of a results.jsonl, or a message saying why the file is not one. */
  function parseResults(text, name) {
    const lines = text.split(/\r?\n/).filter((l) => l.trim());
    if (!lines.length) return { error: `${name} is empty` };
    const records = [];
    for (let i = 0; i < lines.length; i++) {
      let row;
      try {
        row = JSON.parse(lines[i]);
      } catch (_) {
        return { error: `${name} is not a results.jsonl of rationalyst eval: line ${i + 1} is not JSON` };
      }
      if (!row || typeof row !== "object" || Array.isArray(row) || typeof row.key !== "string" || !("question" in row)) {
        return { error: `${name} is not a results.jsonl of rationalyst eval: line ${i + 1} has no key and question` };
      }
      if (row.response !== undefined && (typeof row.response !== "object" || row.response === null || !Array.isArray(row.response.steps))) {
        return { error: `${name}: line ${i + 1} has a response that is not a reasoning response` };
      }
      records.push(row);
    }
    return { records };
  }

  async function loadFile(file) {
    if (!file) return;
    let text;
    try {
      text = await file.text();
    } catch (exc) {
      status("error", `${file.name}: cannot be read (${exc.message})`);
      return;
    }
    const parsed = parseResults(text, file.name);
    if (parsed.error) {
      status("error", parsed.error);
      return;
    }
    renderResults(file.name, parsed.records);
    status("info", `${file.name}: ${parsed.records.length} record(s); click one to open its trace`);
  }

  function renderResults(name, records) {
    const box = clear($("results"));
    box.hidden = false;
    const correct = records.filter((r) => r.correct === true).length;
    box.appendChild(el("h2", {}, `${name}: ${records.length} records, ${correct} correct`));
    const table = el("table", { class: "results-table" },
      el("tr", {}, ...["task", "item", "heuristic", "", "predicted", "gold", "steps", "error"].map((h) => el("th", {}, h))));
    records.forEach((rec, i) => {
      const tr = el("tr", { "data-record": i },
        el("td", {}, rec.task ?? "—"), el("td", {}, rec.item_id ?? "—"), el("td", {}, rec.heuristic ?? "—"),
        el("td", { class: rec.correct ? "ok" : "bad" }, rec.correct ? "✓" : "✗"),
        el("td", {}, rec.predicted ?? "—"), el("td", {}, rec.gold_answer ?? rec.gold ?? "—"),
        el("td", { class: "num" }, rec.n_steps ?? "—"), el("td", {}, rec.error ?? ""));
      tr.addEventListener("click", () => {
        if (!rec.response) {
          status("error", `record ${i + 1} has no response (${rec.error || "failed"})`);
          return;
        }
        const run = runFromResponse(rec.response, `${rec.task ?? ""} ${rec.item_id ?? i} · ${rec.heuristic ?? ""}`);
        showRun(run);
      });
      table.appendChild(tr);
    });
    box.appendChild(table);
  }

  function wireDrop() {
    const zone = $("drop");
    const stop = (e) => { e.preventDefault(); e.stopPropagation(); };
    for (const name of ["dragenter", "dragover"]) {
      document.addEventListener(name, (e) => { stop(e); zone.classList.add("over"); });
    }
    document.addEventListener("dragleave", (e) => { stop(e); zone.classList.remove("over"); });
    document.addEventListener("drop", (e) => {
      stop(e);
      zone.classList.remove("over");
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (file) loadFile(file).catch((exc) => status("error", `${file.name}: ${exc.message}`));
    });
    $("results-file").addEventListener("change", (e) => {
      const file = e.target.files[0];
      if (file) loadFile(file).catch((exc) => status("error", `${file.name}: ${exc.message}`));
      e.target.value = "";
    });
  }

  // -- start ----------------------------------------------------------------------------------

  async function fillOptions() {
    let heuristics = HEURISTICS;
    let strategies = STRATEGIES;
    try {
      const r = await fetch("/openapi.json", { headers: headers(false) });
      if (r.ok) {
        const schemas = (await r.json()).components.schemas;
        heuristics = (schemas.Heuristic && schemas.Heuristic.enum) || heuristics;
        strategies = (schemas.Strategy && schemas.Strategy.enum) || strategies;
      }
    } catch (_) { /* the defaults above */ }
    for (const [id, values] of [["heuristic", heuristics], ["strategy", strategies]]) {
      const select = clear($(id));
      for (const v of values) select.appendChild(el("option", { value: v }, v));
    }
  }

  function start() {
    const key = $("api-key");
    key.value = localStorage.getItem(KEY_STORE) || "";
    key.addEventListener("change", () => localStorage.setItem(KEY_STORE, key.value));
    $("ask").addEventListener("submit", ask);
    $("cancel").addEventListener("click", cancel);
    $("open").addEventListener("submit", openTrace);
    $("compare-form").addEventListener("submit", compare);
    for (const id of ["compare-a", "compare-b"]) {
      $(id).addEventListener("change", () => { $(id).dataset.picked = "1"; });
    }
    wireDrop();
    fillOptions().then(() => {
      document.body.dataset.ready = "1";
      const m = /(?:^|[#&])trace=([^&]+)/.exec(location.hash);
      if (m) openById(decodeURIComponent(m[1]));
    });
  }

  // for tests and the console: the runs loaded on the page
  window.rationalystViewer = { runs, showRun, openById };
  start();
})();
