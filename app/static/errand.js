/* errand.js: a browser client for Errand's HTTP API. No build step, no dependency.
 *
 *   <script src="/static/errand.js"></script>
 *   const errand = Errand.client({key: "erd_..."});
 *   const task = await errand.submit("demo.progress", {steps: 5, delay: 1});
 *   Errand.watch(task.id, {key: "erd_...", onProgress: t => ..., onDone: t => ...});
 *
 * Calls reject with an Error carrying the problem+json answer (status, title, detail,
 * errors; status 0 when the server could not be reached). Watches never throw: they
 * report through their callbacks.
 */
(function () {
  "use strict";

  const FINAL = new Set(["SUCCESS", "FAILURE", "REVOKED"]);
  const BACKOFF_MIN = 500; // ms, the first reconnect's ceiling
  const BACKOFF_MAX = 10000; // ms
  const WAIT = 25; // seconds a long-poll may be held by the server (it allows 30)
  // Browsers open at most 6 HTTP/1.1 connections per origin: the watches of one page
  // hold at most this many open (streams, long-polls); the others poll briefly.
  const MAX_HELD = 4;
  let held = 0;

  function isFinal(task) {
    return FINAL.has(task.state);
  }

  function join(baseUrl, path) {
    return (baseUrl || "").replace(/\/+$/, "") + path;
  }

  function taskPath(id) {
    return "/api/v1/tasks/" + encodeURIComponent(id);
  }

  /** Milliseconds a response's Retry-After asks for, or null. */
  function retryAfter(response) {
    const value = (response.headers.get("Retry-After") || "").trim();
    if (!value) return null;
    if (/^\d+$/.test(value)) return Number(value) * 1000;
    const when = Date.parse(value);
    return Number.isNaN(when) ? null : Math.max(0, when - Date.now());
  }

  /** An Error made from a problem+json answer. */
  async function problem(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    const p = body && typeof body === "object" ? body : {};
    const error = new Error(p.detail || p.title || "HTTP " + response.status);
    error.status = response.status;
    error.type = p.type;
    error.title = p.title;
    error.detail = p.detail;
    error.errors = p.errors;
    error.retryAfter = retryAfter(response);
    return error;
  }

  function networkError(cause) {
    const why = (cause && cause.message) || cause;
    const error = new Error("the server could not be reached: " + why);
    error.status = 0;
    error.cause = cause;
    return error;
  }

  /** fetch with the key; a network failure becomes an Error with status 0. */
  async function send(settings, method, path, body, headers, signal) {
    const all = Object.assign({Accept: "application/json"}, headers);
    if (settings.key) all.Authorization = "Bearer " + settings.key;
    if (body !== undefined) all["Content-Type"] = "application/json";
    try {
      return await fetch(join(settings.baseUrl, path), {
        method: method,
        headers: all,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        signal: signal,
      });
    } catch (e) {
      if (e && e.name === "AbortError") throw e;
      throw networkError(e);
    }
  }

  async function call(settings, method, path, body, headers) {
    const response = await send(settings, method, path, body, headers);
    if (!response.ok) throw await problem(response);
    return response.json();
  }

  function client(options) {
    const o = options || {};
    const settings = {key: o.key || "", baseUrl: o.baseUrl || ""};
    return {
      /** POST /api/v1/tasks; options: {countdown, priority, idempotencyKey}. */
      submit(task, params, opts) {
        const body = {task: task, params: params || {}};
        const headers = {};
        const rest = Object.assign({}, opts);
        if (rest.idempotencyKey != null) {
          headers["Idempotency-Key"] = '"' + rest.idempotencyKey + '"';
        }
        delete rest.idempotencyKey;
        if (Object.keys(rest).length) body.options = rest;
        return call(settings, "POST", "/api/v1/tasks", body, headers);
      },
      get: (id) => call(settings, "GET", taskPath(id)),
      cancel: (id) => call(settings, "DELETE", taskPath(id)),
      retry: (id) => call(settings, "POST", taskPath(id) + "/retry"),
      /** GET /api/v1/tasks: resolves {items, next_cursor}. */
      list(filters) {
        const query = new URLSearchParams();
        for (const name of ["state", "task", "limit", "cursor"]) {
          const value = filters && filters[name];
          if (value != null && value !== "") query.set(name, value);
        }
        const text = query.toString();
        return call(settings, "GET", "/api/v1/tasks" + (text ? "?" + text : ""));
      },
      /** GET /api/v1/task-types: resolves the list of task types. */
      taskTypes: () => call(settings, "GET", "/api/v1/task-types").then((body) => body.items),
      watch: (id, handlers) => watch(id, Object.assign({}, settings, handlers)),
    };
  }

  /** Watch one task until it is final: Server-Sent Events, else long-polls. */
  function watch(id, options) {
    const o = options || {};
    const settings = {key: o.key || "", baseUrl: o.baseUrl || ""};
    const path = taskPath(id);
    const wait = o.wait == null ? WAIT : o.wait;
    let stopped = false;
    let timer = null;
    let controller = null;
    let source = null;
    let holding = false; // whether this watch counts in held for its stream
    let last = null; // the JSON of the last task delivered
    let lastProgress = null;
    let etag = null;
    let lastEventId = "";
    let failures = 0;

    function emit(name, value) {
      if (typeof o[name] !== "function") return;
      try {
        o[name](value);
      } catch (e) {
        console.error("Errand.watch: " + name + " threw", e);
      }
    }

    function closeSource() {
      if (source) source.close();
      source = null;
      if (holding) held -= 1;
      holding = false;
    }

    function stop() {
      stopped = true;
      clearTimeout(timer);
      closeSource();
      if (controller) controller.abort();
    }

    function giveUp(error) {
      if (stopped) return;
      stop();
      emit("onError", error);
    }

    /** Run a step; anything unexpected ends the watch through onError, not in the page. */
    function run(step) {
      if (stopped) return;
      Promise.resolve()
        .then(step)
        .catch((e) => {
          if (!(e && e.name === "AbortError")) giveUp(e);
        });
    }

    /** Run a step again later: the server's Retry-After, else backoff with jitter. */
    function later(step, error) {
      if (stopped) return;
      failures += 1;
      const ceiling = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (failures - 1));
      let delay = ceiling / 2 + (Math.random() * ceiling) / 2;
      if (error && error.retryAfter != null) {
        delay = Math.max(100, Math.min(error.retryAfter, 60000));
      }
      timer = setTimeout(() => run(step), delay);
    }

    function retryable(status) {
      return status === 0 || status === 408 || status === 429 || status >= 500;
    }

    function deliver(task) {
      const text = JSON.stringify(task);
      if (text !== last) {
        last = text;
        emit("onUpdate", task);
        const progress = JSON.stringify(task.progress);
        if (task.progress && progress !== lastProgress && !stopped) {
          lastProgress = progress;
          emit("onProgress", task);
        }
      }
      if (isFinal(task) && !stopped) {
        stop();
        emit("onDone", task);
      }
    }

    async function poll() {
      // Long-poll once the server gave an ETag to compare with; else ask and wait Retry-After.
      const holds = Boolean(etag) && wait > 0 && held < MAX_HELD;
      const headers = etag ? {"If-None-Match": etag} : {};
      const started = Date.now();
      controller = new AbortController();
      const own = controller;
      const deadline = setTimeout(() => own.abort(), (holds ? wait : 0) * 1000 + 15000);
      if (holds) held += 1;
      let response;
      try {
        const url = path + (holds ? "?wait=" + wait : "");
        response = await send(settings, "GET", url, undefined, headers, own.signal);
      } catch (e) {
        if (stopped) return;
        return later(poll, e && e.name === "AbortError" ? networkError("timed out") : e);
      } finally {
        clearTimeout(deadline);
        if (holds) held -= 1;
      }
      let changed = false;
      if (response.status === 304) {
        failures = 0;
      } else if (response.ok) {
        let task;
        try {
          task = await response.json();
        } catch (e) {
          return later(poll, networkError(e));
        }
        if (stopped) return;
        failures = 0;
        etag = response.headers.get("ETag");
        changed = JSON.stringify(task) !== last;
        deliver(task);
      } else {
        const error = await problem(response);
        return retryable(error.status) ? later(poll, error) : giveUp(error);
      }
      if (stopped) return;
      const pause = changed ? 0 : (retryAfter(response) || 1000) - (Date.now() - started);
      timer = setTimeout(() => run(poll), Math.max(100, pause));
    }

    async function stream() {
      if (typeof EventSource !== "function" || held >= MAX_HELD) return poll();
      held += 1; // taken now, so that watches started together share the places
      holding = true;
      try {
        await openStream();
      } finally {
        if (!source) closeSource();
      }
    }

    async function openStream() {
      controller = new AbortController();
      let response;
      try {
        const url = path + "/stream-token";
        response = await send(settings, "POST", url, undefined, {}, controller.signal);
      } catch (e) {
        if (stopped) return;
        return later(stream, e);
      }
      if (!response.ok) {
        const error = await problem(response);
        if (retryable(error.status)) return later(stream, error);
        if (error.status === 401 || error.status === 403) return giveUp(error);
        return run(poll); // no event streams here (or no such task: the poll says which)
      }
      let minted;
      try {
        minted = await response.json();
      } catch (e) {
        return run(poll);
      }
      if (stopped) return;
      const url = new URL(minted.events, new URL(settings.baseUrl || ".", location.href));
      if (lastEventId) url.searchParams.set("last_event_id", lastEventId);
      let openedAt = 0;
      source = new EventSource(url.href);
      source.addEventListener("open", () => {
        openedAt = Date.now();
      });
      source.addEventListener("state", (event) => {
        try {
          lastEventId = event.lastEventId || lastEventId;
          failures = 0;
          deliver(JSON.parse(event.data));
        } catch (e) {
          giveUp(e);
        }
      });
      source.addEventListener("error", () => {
        closeSource();
        if (stopped) return;
        if (!openedAt) return run(poll); // the stream would not start: long-poll instead
        if (Date.now() - openedAt > 5000) failures = 0;
        later(stream); // it dropped: mint a new token (the old may have expired) and reconnect
      });
    }

    run(o.transport === "poll" ? poll : stream);
    return {stop: stop};
  }

  window.Errand = {client: client, watch: watch, FINAL_STATES: Array.from(FINAL)};
})();
