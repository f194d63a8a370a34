/* The page at /: a form for every task type, live jobs, recent tasks. Only errand.js and
 * the public API. Everything from the API is put in the page as text (textContent). */
(function () {
  "use strict";

  const KEY = "errand.key"; // sessionStorage: this tab only
  const REFRESH = 5000; // ms between refreshes of the recent tasks
  const $ = (id) => document.getElementById(id);
  const jobs = new Map(); // task id -> {card, watch}
  let errand = null;
  let types = [];
  let refresher = null;

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function show(element, text) {
    element.textContent = text || "";
    element.hidden = !text;
  }

  function describe(error) {
    const lines = [error.message];
    for (const item of error.errors || []) lines.push((item.loc || []).join(".") + ": " + item.msg);
    return lines.join("\n");
  }

  // -- the key, and starting up ---------------------------------------------------------------

  async function start() {
    const key = storedKey();
    errand = Errand.client({key: key});
    try {
      types = await errand.taskTypes();
    } catch (error) {
      if (error.status === 401) {
        return askForKey(key ? "That key was refused: " + error.message : "");
      }
      show($("notice"), "The API did not answer (" + error.message + "); trying again.");
      setTimeout(start, REFRESH);
      return;
    }
    show($("notice"), "");
    $("key-section").hidden = true;
    $("key-status").hidden = !key;
    $("work").hidden = false;
    renderTypes();
    refreshRecent();
    clearInterval(refresher);
    refresher = setInterval(() => document.hidden || refreshRecent(), REFRESH);
  }

  function askForKey(message) {
    clearInterval(refresher);
    for (const id of Array.from(jobs.keys())) removeJob(id);
    $("work").hidden = true;
    $("key-status").hidden = true;
    $("key-section").hidden = false;
    show($("key-error"), message);
    $("key").focus();
  }

  function keyRefused(error) {
    try {
      sessionStorage.removeItem(KEY);
    } catch (e) {
      // nothing kept, nothing to forget
    }
    askForKey("The API refused the key: " + error.message);
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) return show($("key-error"), "Enter a key.");
    try {
      sessionStorage.setItem(KEY, key);
    } catch (e) {
      return show($("key-error"), "This browser keeps nothing in sessionStorage.");
    }
    $("key").value = "";
    start();
  });

  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    askForKey("");
  });

  // -- the form, made from each task type's params_schema -------------------------------------

  function resolve(schema, defs) {
    if (schema && schema.$ref) return defs[schema.$ref.split("/").pop()] || {};
    return schema || {};
  }

  /** The kind of input for a property, and the schema to read limits from. */
  function kindOf(property, defs) {
    let schema = resolve(property, defs);
    if (schema.anyOf) {
      const others = schema.anyOf.filter((s) => s.type !== "null");
      if (others.length !== 1) return {kind: "json", schema: schema};
      schema = resolve(others[0], defs);
    }
    const items = resolve(schema.items, defs);
    const simple = {integer: "integer", number: "number", string: "string", boolean: "boolean"};
    if (simple[schema.type]) return {kind: simple[schema.type], schema: schema};
    if (schema.type === "array" && items.type === "string") return {kind: "lines", schema: schema};
    return {kind: "json", schema: schema};
  }

  /** A skeleton of the JSON a schema wants, shown as a placeholder. */
  function example(schema, defs, depth) {
    const s = resolve(schema, defs);
    if (depth > 4) return null;
    if (s.type === "array") return [example(s.items, defs, depth + 1)];
    if (s.type === "object") {
      const out = {};
      for (const [name, sub] of Object.entries(s.properties || {})) {
        out[name] = example(sub, defs, depth + 1);
      }
      return out;
    }
    return {string: "", integer: 0, number: 0, boolean: false}[s.type] ?? null;
  }

  function field(name, property, required, defs) {
    const {kind, schema} = kindOf(property, defs);
    const id = "param-" + name;
    const wrap = document.createElement("div");
    wrap.className = "field";
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = name + " ";
    if (!required) {
      const optional = document.createElement("span");
      optional.className = "optional";
      optional.textContent = "optional";
      label.append(optional);
    }
    let input;
    const fallback = property.default;
    if (kind === "lines" || kind === "json" || (kind === "string" && !(schema.maxLength <= 1000))) {
      input = document.createElement("textarea");
      input.rows = kind === "json" ? 5 : 3;
      if (kind === "lines") {
        input.placeholder = "one per line";
        if (Array.isArray(fallback)) input.value = fallback.join("\n");
      } else if (kind === "json") {
        input.placeholder = JSON.stringify(example(property, defs, 0), null, 1);
        if (fallback != null) input.value = JSON.stringify(fallback, null, 2);
      } else if (fallback != null) {
        input.value = fallback;
      }
    } else {
      input = document.createElement("input");
      if (kind === "boolean") {
        input.type = "checkbox";
        input.checked = fallback === true;
      } else {
        input.type = kind === "string" ? "text" : "number";
        if (kind === "integer") input.step = "1";
        if (kind === "number") input.step = "any";
        if (schema.minimum != null) input.min = schema.minimum;
        if (schema.maximum != null) input.max = schema.maximum;
        if (fallback != null) input.value = fallback;
      }
    }
    input.id = id;
    input.name = name;
    input.dataset.kind = kind;
    input.dataset.required = required ? "1" : "";
    if (kind === "boolean") {
      wrap.classList.add("check");
      wrap.append(input, label);
    } else {
      wrap.append(label, input);
    }
    const hint = property.description || (schema.minimum != null && schema.maximum != null
      ? schema.minimum + " to " + schema.maximum : "");
    if (hint) {
      const p = document.createElement("p");
      p.className = "hint";
      p.textContent = hint;
      wrap.append(p);
    }
    return wrap;
  }

  function renderTypes() {
    const select = $("task-type");
    const chosen = select.value;
    select.replaceChildren();
    for (const type of types) {
      const option = document.createElement("option");
      option.value = type.name;
      option.textContent = type.name;
      select.append(option);
    }
    if (types.some((t) => t.name === chosen)) select.value = chosen;
    else if (types.some((t) => t.name === "demo.progress")) select.value = "demo.progress";
    renderParams();
  }

  function renderParams() {
    const type = types.find((t) => t.name === $("task-type").value);
    const box = $("params");
    box.replaceChildren(box.querySelector("legend"));
    show($("submit-error"), "");
    if (!type) return;
    $("task-description").textContent = type.description;
    const schema = type.params_schema || {};
    const required = new Set(schema.required || []);
    for (const [name, property] of Object.entries(schema.properties || {})) {
      box.append(field(name, property, required.has(name), schema.$defs || {}));
    }
  }

  $("task-type").addEventListener("change", renderParams);

  /** The params the form holds, or an Error naming the field that is not JSON. */
  function readParams() {
    const params = {};
    for (const input of $("params").querySelectorAll("[data-kind]")) {
      input.classList.remove("invalid");
      const kind = input.dataset.kind;
      const raw = input.value;
      if (kind === "boolean") {
        params[input.name] = input.checked;
        continue;
      }
      if (kind === "lines") {
        const lines = raw.split("\n").map((line) => line.trim()).filter(Boolean);
        if (lines.length || input.dataset.required) params[input.name] = lines;
        continue;
      }
      if (raw.trim() === "") {
        if (input.dataset.required && kind === "string") params[input.name] = raw;
        continue;
      }
      if (kind === "integer" || kind === "number") {
        const value = Number(raw);
        params[input.name] = Number.isFinite(value) ? value : raw; // the API says what is wrong
      } else if (kind === "json") {
        try {
          params[input.name] = JSON.parse(raw);
        } catch (e) {
          input.classList.add("invalid");
          throw new Error(input.name + ": not valid JSON (" + e.message + ")");
        }
      } else {
        params[input.name] = raw;
      }
    }
    return params;
  }

  function readOptions() {
    const options = {};
    for (const name of ["countdown", "priority"]) {
      const raw = $("option-" + name).value.trim();
      if (raw !== "") options[name] = Number.isFinite(Number(raw)) ? Number(raw) : raw;
    }
    return options;
  }

  $("submit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    show($("submit-error"), "");
    const button = $("submit-button");
    let params;
    try {
      params = readParams();
    } catch (error) {
      return show($("submit-error"), error.message);
    }
    button.disabled = true;
    try {
      const task = await errand.submit($("task-type").value, params, readOptions());
      addJob(task);
      refreshRecent();
    } catch (error) {
      if (error.status === 401) return keyRefused(error);
      show($("submit-error"), describe(error));
      for (const item of error.errors || []) {
        const loc = item.loc || [];
        const input = loc[0] === "params" && $("param-" + loc[1]);
        if (input) input.classList.add("invalid");
      }
    } finally {
      button.disabled = false;
    }
  });

  // -- jobs, watched live ---------------------------------------------------------------------

  function addJob(task) {
    if (jobs.has(task.id)) return;
    const card = $("job-template").content.firstElementChild.cloneNode(true);
    card.dataset.taskId = task.id;
    card.querySelector(".job-task").textContent = task.task;
    card.querySelector(".job-id").textContent = task.id.slice(0, 8);
    card.querySelector(".job-id").title = task.id;
    card.querySelector(".cancel").addEventListener("click", () => cancelJob(task.id));
    card.querySelector(".retry").addEventListener("click", () => retryJob(task.id));
    card.querySelector(".remove").addEventListener("click", () => removeJob(task.id));
    const job = {card: card, watch: null};
    jobs.set(task.id, job);
    $("jobs").prepend(card);
    $("no-jobs").hidden = true;
    render(card, task);
    job.watch = errand.watch(task.id, {
      onUpdate: (t) => render(card, t),
      onDone: () => refreshRecent(),
      onError: (error) => {
        if (error.status === 401) return keyRefused(error);
        note(card, "Stopped watching: " + error.message);
      },
    });
  }

  function removeJob(id) {
    const job = jobs.get(id);
    if (!job) return;
    if (job.watch) job.watch.stop();
    job.card.remove();
    jobs.delete(id);
    $("no-jobs").hidden = jobs.size > 0;
  }

  function note(card, text) {
    show(card.querySelector(".job-note"), text);
  }

  function render(card, task) {
    const final = Errand.FINAL_STATES.includes(task.state);
    const state = card.querySelector(".state");
    state.textContent = task.state;
    state.className = "state state-" + String(task.state).toLowerCase();
    card.dataset.state = task.state;

    const bar = card.querySelector(".bar");
    const text = card.querySelector(".job-progress");
    const progress = task.progress;
    if (progress && progress.percent != null) {
      bar.value = task.state === "SUCCESS" ? 100 : progress.percent;
      const parts = [progress.current + " / " + progress.total, progress.message];
      text.textContent = parts.concat(bar.value + " %").filter(Boolean).join(" · ");
    } else if (task.state === "SUCCESS") {
      bar.value = 100;
      text.textContent = "done · 100 %";
    } else if (final && !bar.hasAttribute("value")) {
      bar.value = 0; // no longer running: not an indeterminate bar
    } else if (!bar.hasAttribute("value")) {
      text.textContent = task.state === "PENDING" ? "waiting for a worker" : "running";
    }

    const result = card.querySelector(".job-result");
    result.hidden = task.state !== "SUCCESS";
    result.textContent = task.state === "SUCCESS" ? JSON.stringify(task.result, null, 2) : "";

    const error = card.querySelector(".job-error");
    const prefix = task.state === "RETRY" ? "will retry after " : "";
    show(error, task.error ? prefix + task.error.type + ": " + task.error.message : "");

    const retriedBy = task.links && task.links.retried_by;
    card.querySelector(".cancel").hidden = final;
    const retryable = ["FAILURE", "REVOKED"].includes(task.state) && !retriedBy;
    card.querySelector(".retry").hidden = !retryable;
    if (retriedBy) note(card, "Retried as " + retriedBy.split("/").pop().slice(0, 8));
  }

  async function cancelJob(id) {
    const job = jobs.get(id);
    const button = job.card.querySelector(".cancel");
    button.disabled = true;
    try {
      render(job.card, await errand.cancel(id));
    } catch (error) {
      if (error.status === 401) return keyRefused(error);
      note(job.card, "Could not cancel: " + error.message);
    } finally {
      button.disabled = false;
    }
  }

  async function retryJob(id) {
    const job = jobs.get(id);
    const button = job.card.querySelector(".retry");
    button.disabled = true;
    try {
      const task = await errand.retry(id);
      addJob(task);
      render(job.card, await errand.get(id));
      refreshRecent();
    } catch (error) {
      if (error.status === 401) return keyRefused(error);
      note(job.card, "Could not retry: " + error.message);
    } finally {
      button.disabled = false;
    }
  }

  // -- recent tasks ---------------------------------------------------------------------------

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  async function refreshRecent() {
    let listing;
    try {
      listing = await errand.list({limit: 20});
    } catch (error) {
      if (error.status === 401) return keyRefused(error);
      return show($("notice"), "Could not list the recent tasks: " + error.message);
    }
    show($("notice"), "");
    const rows = listing.items.map((task) => {
      const row = document.createElement("tr");
      row.dataset.taskId = task.id;
      cell(row, task.state, "state state-" + String(task.state).toLowerCase());
      cell(row, task.task);
      cell(row, task.id.slice(0, 8)).title = task.id;
      cell(row, task.created_at ? new Date(task.created_at).toLocaleTimeString() : "");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = "Watch";
      button.disabled = jobs.has(task.id);
      button.addEventListener("click", () => {
        addJob(task);
        button.disabled = true;
      });
      cell(row, "").append(button);
      return row;
    });
    $("recent").replaceChildren(...rows);
  }

  start();
})();
