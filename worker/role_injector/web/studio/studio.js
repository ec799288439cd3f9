// Role studio. Everything about fitting comes from the worker: /v1/roles (the list), /v1/roles/<name>
// (sections and variables), /v1/profiles (models and formats) and /v1/plan (what /v1/inject does for
// these inputs, per section). This script only asks and draws; it has no budget rule of its own.

const POLL_MS = 2000; // how often the roles list is compared with the worker's (files change under it)
const PLAN_DELAY_MS = 150; // a slider held down asks once it rests, not on every step
const KEY_STORAGE = "role-injector-api-key";
const API = new URL("../", document.baseURI); // the worker's root, also behind a proxy's sub-path

const $ = (id) => document.getElementById(id);
const number = (n) => Number(n).toLocaleString("en");

// A new element with properties (className, textContent, dir, title, ...) and children.
function el(tag, props = {}, ...children) {
  const element = Object.assign(document.createElement(tag), props);
  element.append(...children);
  return element;
}

const state = {
  roles: null, // last /v1/roles text, to notice changes
  listed: [], // its roles
  role: null, // /v1/roles/<name> of the selected role
  budget: null, // null: the role's default (no budget sent)
  plan: null, // last successful /v1/plan answer
  planTimer: 0,
  planAbort: null,
  planSeq: 0,
  selectSeq: 0,
  waitingForKey: false,
};

// --- talking to the worker -------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

async function api(method, path, body, signal) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(new URL(path, API), {
      method, headers, signal, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", `cannot reach the worker at ${API.origin}: ${error.message}`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    // not JSON: reported below with the status
  }
  if (response.ok && data !== null) return data;
  if (data && data.error && typeof data.error === "object") {
    throw new ApiError(response.status, data.error.code, data.error.message, data.error.details);
  }
  throw new ApiError(response.status, "bad_answer",
    `the worker answered ${response.status} ${response.statusText} with ${text.slice(0, 200) || "nothing"}`);
}

// --- messages --------------------------------------------------------------------------------

const messages = new Map(); // source -> element; one message per source, replaced or cleared

function say(source, error) {
  messages.get(source)?.remove();
  messages.delete(source);
  if (!error) return;
  const text = el("p", { className: "message-text" });
  text.dataset.code = error.code || "error";
  if (error.code) text.append(el("code", { textContent: error.code }), " ");
  text.append(error.message || String(error)); // an unknown role's message already names close ones
  const close = el("button", { type: "button", textContent: "Dismiss" });
  close.setAttribute("aria-label", "Dismiss this message");
  close.addEventListener("click", () => say(source, null));
  const box = el("div", { className: "message" }, text, close);
  box.dataset.source = source;
  $("messages").append(box);
  messages.set(source, box);
}

function failed(source, error) {
  if (error.name === "AbortError") return;
  if (error.status === 401) askForKey(Boolean(sessionStorage.getItem(KEY_STORAGE)));
  else say(source, error);
}

// The worker's answer, or null once its error is on the page as the message of `source`.
async function ask(source, path) {
  try {
    const answer = await api("GET", path);
    say(source, null);
    return answer;
  } catch (error) {
    failed(source, error);
    return null;
  }
}

// --- the API key -----------------------------------------------------------------------------

function askForKey(refused) {
  state.waitingForKey = true;
  $("key-form").hidden = false;
  $("roles-status").textContent = "Waiting for the API key.";
  say("key", refused
    ? { code: "unauthorized", message: "the worker refused this key; enter the right one" }
    : { code: "unauthorized", message: "this worker needs its API key" });
  $("key-input").focus();
  showKeyState();
}

function showKeyState() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  $("key-state").textContent = key ? "API key: set for this tab" : "";
  $("forget-key").hidden = !key;
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("key-input").value = "";
  $("key-form").hidden = true;
  state.waitingForKey = false;
  say("key", null);
  showKeyState();
  start();
  if (state.role) planNow();
});

$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  showKeyState();
  start();
});

// --- the roles list --------------------------------------------------------------------------

// The role the address names (#name). A hash typed or linked by hand may be no valid escape
// (#%E0%A4%A): it names no role then, rather than stopping the page.
function hashRole() {
  try {
    return decodeURIComponent(location.hash.slice(1));
  } catch {
    return "";
  }
}

async function loadRoles() {
  if (state.waitingForKey) return;
  const answer = await ask("roles", "v1/roles");
  if (!answer) return;
  const text = JSON.stringify(answer);
  if (text === state.roles) return;
  state.roles = text;
  state.listed = answer.roles;
  drawRoles(answer);
  const wanted = state.role?.name || hashRole();
  const current = answer.roles.find((role) => role.name === wanted);
  const fileError = answer.errors.find((error) => error.file === `${wanted}.md`);
  say("role-file", current && fileError ? { code: "invalid_role", message: `${fileError.file}: ${fileError.message}` } : null);
  if (state.role && !current) {
    say("role", { code: "role_gone", message: `role ${state.role.name} is gone: its file was removed or no longer loads` });
  } else if (current && (!state.role || current.version !== state.role.version)) {
    selectRole(current.name, false);
  }
}

function drawRoles(answer) {
  const list = $("roles");
  list.replaceChildren();
  const brokenFiles = new Set(answer.errors.map((error) => error.file));
  for (const role of answer.roles) {
    const meta = `${number(role.tokens)} tokens · ${role.version.slice(7, 19)}`
      + (role.tags.length ? ` · ${role.tags.join(", ")}` : "");
    const button = el("button", { type: "button" },
      el("span", { className: "name", textContent: role.name }),
      el("span", { className: "description", dir: "auto", textContent: role.description || "(no description)" }),
      el("span", { className: "meta", textContent: meta,
        title: `Tokens of the file as written ({{variables}} unfilled), by the tokenizer of the role's model; version ${role.version}` }));
    if (brokenFiles.has(`${role.name}.md`)) {
      button.append(el("span", { className: "warning", textContent: "Its file does not load: this is the last good version" }));
    }
    button.dataset.role = role.name;
    button.addEventListener("click", () => selectRole(role.name, true));
    if (state.role?.name === role.name) button.setAttribute("aria-current", "true");
    list.append(el("li", {}, button));
  }
  $("roles-status").textContent = answer.roles.length
    ? `${answer.roles.length} role${answer.roles.length === 1 ? "" : "s"}`
    : "No roles in the worker's roles folder.";
  const broken = $("broken-list");
  broken.replaceChildren();
  for (const error of answer.errors) {
    broken.append(el("li", {}, el("span", { className: "file", textContent: error.file }), ": ", error.message));
  }
  $("broken").hidden = answer.errors.length === 0;
}

// --- one role --------------------------------------------------------------------------------

async function selectRole(name, picked) {
  const seq = ++state.selectSeq;
  const detail = await ask("role", `v1/roles/${encodeURIComponent(name)}`);
  if (!detail || seq !== state.selectSeq) return; // a later pick wins
  const same = state.role?.name === detail.name;
  state.role = detail;
  if (!same) {
    state.budget = null;
    state.plan = null;
    $("model").value = "";
    $("format").value = "";
    $("message").value = "";
    $("selection").value = "";
    $("query").value = "";
  }
  if (picked) history.replaceState(null, "", `#${encodeURIComponent(name)}`);
  for (const button of $("roles").querySelectorAll("button")) {
    if (button.dataset.role === name) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
  drawRole(detail, same);
  $("pick-hint").hidden = true;
  $("role-view").hidden = false;
  planNow();
}

function drawRole(role, keepInputs) {
  $("role-name").textContent = role.name;
  $("role-description").textContent = role.description || "";
  const facts = $("role-facts");
  facts.replaceChildren();
  const fact = (term, value) => facts.append(el("div", {}, el("dt", { textContent: term }), el("dd", { textContent: value })));
  fact("Version", role.version);
  fact("Model", role.model || "none set");
  fact("Budget in the file", role.budget ? `${number(role.budget)} tokens` : "none: what the context leaves");
  if (role.extends) fact("Extends", role.extends);
  if (role.tags.length) fact("Tags", role.tags.join(", "));
  $("model").placeholder = role.model ? `${role.model} (the role's)` : "the default profile";
  $("selection-default").textContent = `The role's (${role.selection})`;
  if (!keepInputs) {
    $("budget").max = String(Math.max(role.tokens, role.budget || 0, 1));
    setBudget(role.budget || role.tokens, false); // until the worker answers with the real budget
  }
  drawVariables(role, keepInputs);
  drawSections(unplannedSections(role));
}

/** A role's sections as the bars draw them while there is no fit to show. */
function unplannedSections(role) {
  return role.sections.map((section, index) => ({
    ...section, index, label: section.title ?? "(preamble)", state: "unknown", kept_chars: 0,
  }));
}

function drawVariables(role, keepInputs) {
  const box = $("variable-fields");
  const old = new Map([...box.querySelectorAll("input")].map((input) => [input.name, input.value]));
  box.replaceChildren();
  for (const variable of role.variables) {
    const id = `var-${variable.name}`;
    const label = el("label", { htmlFor: id, textContent: variable.name });
    if (variable.required) {
      const mark = el("span", { className: "required-mark", textContent: " *" });
      mark.setAttribute("aria-hidden", "true");
      label.append(mark);
    }
    const input = el("input", { id, name: variable.name, dir: "auto", required: variable.required });
    if (variable.default !== null) input.placeholder = variable.default;
    if (keepInputs && old.has(variable.name)) input.value = old.get(variable.name);
    const help = el("p", { className: "help", id: `${id}-help`, dir: "auto", textContent: [
      variable.required ? "Required." : `Default: ${variable.default === null ? "empty" : `“${variable.default}”`}.`,
      variable.description,
    ].filter(Boolean).join(" ") });
    input.setAttribute("aria-describedby", help.id);
    input.addEventListener("input", () => planSoon());
    box.append(el("div", { className: "field" }, label, input, help));
  }
  $("variables").hidden = role.variables.length === 0;
}

// --- the budget and the other inputs ---------------------------------------------------------

function setBudget(value, fromUser) {
  const slider = $("budget");
  const budget = Math.max(1, Math.round(value));
  if (budget > Number(slider.max)) slider.max = String(budget);
  slider.value = String(budget);
  slider.setAttribute("aria-valuetext", `${number(budget)} tokens`);
  if (document.activeElement !== $("budget-number")) $("budget-number").value = String(budget);
  if (fromUser) {
    state.budget = budget;
    planSoon();
  }
}

$("budget").addEventListener("input", () => setBudget(Number($("budget").value), true));
$("budget-number").addEventListener("input", () => {
  const value = Number($("budget-number").value);
  if (Number.isInteger(value) && value >= 1) setBudget(value, true);
});
$("budget-number").addEventListener("change", () => setBudget(Number($("budget").value), false));
$("budget-reset").addEventListener("click", () => {
  state.budget = null;
  planNow();
});
for (const id of ["model", "message", "query"]) $(id).addEventListener("input", () => planSoon());
for (const id of ["format", "selection"]) $(id).addEventListener("change", () => planNow());
$("controls").addEventListener("submit", (event) => event.preventDefault());

function planRequest() {
  const body = { role: state.role.name };
  if (state.budget !== null) body.budget = state.budget;
  const model = $("model").value.trim();
  if (model) body.model = model;
  const format = $("format").value;
  if (format) body.format = format;
  const variables = {};
  for (const input of $("variable-fields").querySelectorAll("input")) {
    if (input.value !== "") variables[input.name] = input.value;
  }
  if (Object.keys(variables).length) body.variables = variables;
  const message = $("message").value;
  if (message.trim()) body.prompt = message;
  const selection = $("selection").value;
  if (selection) body.selection = selection;
  const query = $("query").value;
  if (query.trim()) body.query = query;
  return body;
}

function planSoon() {
  clearTimeout(state.planTimer);
  $("role").setAttribute("aria-busy", "true");
  state.planTimer = setTimeout(plan, PLAN_DELAY_MS);
}

function planNow() {
  clearTimeout(state.planTimer);
  plan();
}

async function plan() {
  if (!state.role) return;
  state.planAbort?.abort();
  const abort = new AbortController();
  state.planAbort = abort;
  const seq = ++state.planSeq;
  const body = planRequest();
  $("role").setAttribute("aria-busy", "true");
  try {
    const answer = await api("POST", "v1/plan", body, abort.signal);
    if (seq !== state.planSeq) return;
    say("plan", null);
    markVariables([]);
    drawPlan(answer, body);
  } catch (error) {
    if (seq !== state.planSeq) return;
    failed("plan", error);
    if (error.name !== "AbortError") drawNoPlan(error, body);
  } finally {
    if (seq === state.planSeq) $("role").setAttribute("aria-busy", "false");
  }
}

function markVariables(missing) {
  for (const input of $("variable-fields").querySelectorAll("input")) {
    if (missing.includes(input.name)) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
}

// --- drawing a plan --------------------------------------------------------------------------

function drawPlan(answer, body) {
  state.plan = answer;
  const usage = answer.usage;
  const slider = $("budget");
  slider.max = String(Math.max(usage.system_tokens_full, usage.budget, state.budget || 0, 1));
  setBudget(state.budget ?? usage.budget, false);

  markResult(body, { budget: String(usage.budget), systemTokens: String(usage.system_tokens), error: "" });

  const counts = { kept: 0, truncated: 0, dropped: 0 };
  for (const section of answer.sections) counts[section.state] += 1;
  const summary = $("summary");
  summary.replaceChildren();
  summary.append(el("strong", { className: "used", textContent: `${number(usage.system_tokens)} of ${number(usage.budget)} tokens` }), ` used (${Math.round((100 * usage.system_tokens) / usage.budget)}%) · whole role `
    + `${number(usage.system_tokens_full)} tokens · ${counts.kept} kept, ${counts.truncated} cut, ${counts.dropped} dropped`);
  if (body.budget !== undefined && usage.budget !== body.budget) {
    summary.append(el("span", { className: "over",
      textContent: ` · the context leaves ${number(usage.budget)} tokens, less than the ${number(body.budget)} asked` }));
  }
  summary.append(el("br"), budgetNote(state.role, usage, body));
  const listed = state.listed.find((role) => role.name === answer.role.name);
  if (listed && listed.tokens !== usage.system_tokens_full) {
    summary.append(el("br"), el("span", { className: "note whole-role", textContent:
      `Whole role: ${number(usage.system_tokens_full)} tokens with its variables filled, its sections joined as `
      + `fitted, by ${usage.tokenizer}; the list's ${number(listed.tokens)} counts the file as written, `
      + "{{variables}} unfilled." }));
  }
  summary.append(el("br"), `${answer.model || "default model"}: tokenizer ${usage.tokenizer} `
    + `(${usage.exact ? "exact" : "estimated"}) · format ${answer.format} · context ${number(usage.context_window)}, `
    + `${number(usage.reserve_output)} kept for the answer · whole prompt ${number(usage.prompt_tokens)} tokens`);
  summary.append(el("br"), selectionSummary(answer, body));
  $("total-fill").style.width = `${Math.min(100, (100 * usage.system_tokens) / usage.budget)}%`;

  drawSections(answer.sections);
  drawPicks(answer.sections);
  drawFitted(answer);
  $("prompt").textContent = answer.prompt;
  $("prompt-heading").textContent = `Full prompt (${answer.format})`;
}

// What the worker selected by, and what the query did: read from its answer, not decided here.
function selectionSummary(answer, body) {
  const line = el("span", { className: "selection-line" });
  line.dataset.selection = answer.trim.selection;
  if (answer.trim.selection === "priority") {
    line.append(el("strong", { textContent: "Priority selection" }),
      ": the highest priorities after the required sections");
    if (body.query !== undefined) {
      line.append(el("span", { className: "note", textContent: " · the query is not used" }));
    }
    return line;
  }
  const by = body.query !== undefined ? "the query" : body.prompt !== undefined ? "the user message" : null;
  const picked = answer.sections.filter(isPicked).length;
  line.append(el("strong", { textContent: "Relevance selection" }), by ? ` by ${by}: ` : ": ");
  if (!by) {
    line.append("no query and no user message, so nothing to rank by: the core, then priority order");
  } else if (!answer.sections.some((s) => s.score > 0)) {
    line.append(`no section matches ${by} (only stop words, or words the role does not use): `
      + "the core, then priority order");
    line.append(el("span", { className: "note", textContent: ` · ${matchHint(body.query ?? body.prompt, state.role)}` }));
  } else {
    const count = `${picked} section${picked === 1 ? "" : "s"} picked`;
    line.append(el("span", { className: "picked-count", textContent: count }),
      ", after the stable part (required and core)");
  }
  return line;
}

// Where the budget came from, in the worker's figures: a number on the page never differs unexplained.
function budgetNote(role, usage, body) {
  const line = el("span", { className: "note budget-note" });
  const share = `${Math.round(usage.history_share * 100)}%`;
  const room = `a ${number(usage.context_window)}-token context less ${number(usage.reserve_output)} for the answer`
    + (usage.context_policy === "keep_role" ? ` and ${share} kept for the conversation` : " and the conversation");
  const from = body.budget !== undefined ? `the ${number(body.budget)} asked`
    : role.budget ? `the role file's ${number(role.budget)}` : null;
  if (from && usage.budget < (body.budget ?? role.budget)) {
    line.textContent = `Budget ${number(usage.budget)}: ${from}, capped by the context policy (${usage.context_policy}): `
      + `${room}.`;
  } else if (from) {
    line.textContent = `Budget ${number(usage.budget)}: ${from}; the context policy (${usage.context_policy}) `
      + `would allow up to what ${room} leaves.`;
  } else {
    line.textContent = `Budget ${number(usage.budget)}: the role file sets none, so the context policy `
      + `(${usage.context_policy}) gives what ${room} leaves.`;
  }
  return line;
}

// What relevance selection matches, said where a query found nothing: words, not meaning.
const CYRILLIC = /[\u0400-\u04ff]/;
const LATIN = /[a-z]/i;
function matchHint(text, role) {
  const words = "Selection matches words (their English or Russian stems) in titles and text, not meaning";
  const content = role.content || "";
  if (CYRILLIC.test(text) && !CYRILLIC.test(content)) return `${words}: this role has no Russian words, so a Russian query finds nothing`;
  if (LATIN.test(text) && !CYRILLIC.test(text) && !LATIN.test(content)) return `${words}: this role has no English words, so an English query finds nothing`;
  return `${words}: use the words the role itself uses`;
}

// Which request the result shows (and the worker's figures), for tests and tools that read the page.
function markResult(body, figures) {
  Object.assign($("result").dataset, {
    role: body.role,
    requested: body.budget === undefined ? "" : String(body.budget),
    selection: body.selection ?? "",
    query: body.query ?? "",
    ...figures,
  });
}

function drawNoPlan(error, body) {
  state.plan = null;
  markResult(body, { budget: "", systemTokens: "", error: error.code || "error" });
  markVariables(error.details?.missing || []);
  const summary = $("summary");
  summary.replaceChildren();
  summary.append(el("strong", { className: "over", textContent: "No fit: " }), error.message);
  $("total-fill").style.width = "0";
  drawSections(unplannedSections(state.role));
  drawPicks([]);
  $("fitted").replaceChildren();
  $("prompt").textContent = "";
}

// On a narrow window a book-sized role's dropped sections fold away behind this button, so that what
// was kept, cut and picked stands together instead of among a hundred bars (studio.css).
const FOLD_DROPPED_FROM = 12;
$("show-dropped").addEventListener("click", () => {
  const open = $("sections").classList.toggle("unfolded");
  $("show-dropped").setAttribute("aria-expanded", String(open));
  foldLabel();
});
function foldLabel() {
  const dropped = $("sections").querySelectorAll('li[data-state="dropped"]').length;
  $("show-dropped").textContent = $("sections").classList.contains("unfolded")
    ? `Hide the ${number(dropped)} dropped sections` : `Show the ${number(dropped)} dropped sections`;
}

function drawSections(sections) {
  const list = $("sections");
  list.replaceChildren();
  const dropped = sections.filter((section) => section.state === "dropped").length;
  list.classList.toggle("foldable", sections.length > FOLD_DROPPED_FROM && dropped > 0);
  $("show-dropped").hidden = !list.classList.contains("foldable");
  const longest = Math.max(1, ...sections.map((section) => section.tokens));
  for (const section of sections) {
    const heading = el("span", { className: "name" });
    if (section.order) {
      heading.append(el("span", { className: "order", textContent: `${section.order}.`,
        title: "Position in the order the fitter keeps sections" }), " ");
    }
    heading.append(el("span", { className: "title", dir: "auto", textContent: section.label }));
    const why = reasonOf(section);
    const label = el("div", { className: "label" }, heading, why.badge);

    const kept = el("div", { className: "kept" });
    kept.style.width = `${section.chars ? (100 * section.kept_chars) / section.chars : 0}%`;
    const bar = el("div", { className: "bar" }, kept, el("div", { className: "rest" }));
    bar.style.width = `${(100 * section.tokens) / longest}%`;
    const track = el("div", { className: "track" }, bar);
    track.setAttribute("aria-hidden", "true");

    const status = el("div", { className: "state" });
    const name = (text) => el("span", { className: "state-name", textContent: text });
    if (section.state === "truncated") {
      status.append(name("cut"), ` after ${number(section.kept_chars)} of ${number(section.chars)} characters · `
        + `keeps ${number(section.kept_tokens)} of ${number(section.tokens)} tokens`);
    } else if (section.state === "kept" || section.state === "dropped") {
      status.append(name(section.state), ` · ${number(section.tokens)} tokens`);
    } else {
      status.append(`${number(section.tokens)} tokens`);
    }

    const item = el("li", { className: "section" }, label, track, status);
    Object.assign(item.dataset, { state: section.state, label: section.label, tokens: String(section.tokens),
      keptChars: String(section.kept_chars), reason: why.reason, score: section.score ?? "",
      picked: String(why.picked) });
    list.append(item);
  }
  foldLabel();
}

// Picked: ranked for the query and kept (whole or cut), as the worker's reason and state say.
const isPicked = (section) => section.reason === "relevance"
  && (section.state === "kept" || section.state === "truncated");

// Why a section stood where it did, as the worker says (reason, core, score): a badge for its bar.
// Without a fit (an error), what the role declares.
function reasonOf(section) {
  const picked = isPicked(section);
  let reason = section.reason ?? "";
  let text = section.required ? "required" : `priority ${section.priority}`;
  let title = "";
  if (section.core) {
    reason = "core";
    text = "core";
    title = `Kept whatever the question (priority ${section.priority})`;
  } else if (section.reason === "relevance") {
    text = `${picked ? "picked · " : ""}relevance ${section.score}`;
    title = `BM25 score ${section.score} against the query; priority ${section.priority}`;
  } else if (section.reason === "priority" && section.score !== null && section.score !== undefined) {
    title = "Matches nothing in the query: it follows the picked sections in priority order";
  }
  const badge = el("span", { className: `badge ${reason || (section.required ? "required" : "priority")}`,
    textContent: text, title });
  return { reason, picked, badge };
}

// The picked sections in the order the fitter took them (best score first), so a long role's picks
// can be read at a glance; each also stands out in the bars below.
function drawPicks(sections) {
  const list = $("picks");
  list.replaceChildren();
  const picked = sections.filter(isPicked).sort((a, b) => a.order - b.order);
  for (const section of picked) {
    const item = el("li", {}, el("span", { className: "title", dir: "auto", textContent: section.label }), " ",
      el("span", { className: "score", textContent: String(section.score) }));
    if (section.state === "truncated") item.append(" ", el("span", { className: "muted", textContent: "(cut)" }));
    Object.assign(item.dataset, { label: section.label, score: String(section.score) });
    list.append(item);
  }
  list.hidden = picked.length === 0;
}

function drawFitted(answer) {
  // Kept text as plain text, what was removed (and the blank lines around it) inside <del>: the
  // text outside <del> is exactly `system`, the kept pieces joined by blank lines in its order
  // (`position`). In priority selection that is document order, and dropped sections show where they
  // stand. In relevance selection the stable part (required and core) comes first, then what the
  // question picked, each marked; the dropped sections follow all of it.
  const box = $("fitted");
  box.replaceChildren();
  const question = answer.trim.selection === "relevance";
  const kept = answer.sections.filter((s) => s.position !== null).sort((a, b) => a.position - b.position);
  const inPlace = !question && kept.every((s, i) => i === 0 || s.index > kept[i - 1].index);
  const sections = inPlace ? answer.sections : [...kept, ...answer.sections.filter((s) => s.position === null)];
  let anyKept = false;
  let afterStable = false;
  let firstDropped = !inPlace;
  sections.forEach((section, i) => {
    const removed = (className, text, title = "") => box.append(el("del", { className, textContent: text, title }));
    const isKept = section.state !== "dropped";
    if (i > 0) {
      if (isKept && anyKept) box.append("\n\n");
      else removed("sep", "\n\n");
    }
    if (!isKept) {
      removed(firstDropped ? "dropped first-dropped" : "dropped", section.text, `dropped: ${section.label}`);
      firstDropped = false;
      return;
    }
    anyKept = true;
    const piece = el("span", { className: "kept", textContent: section.text.slice(0, section.kept_chars) });
    if (section.reason === "relevance") {
      piece.classList.add("picked");
      piece.title = `picked for the query: ${section.label}, relevance ${section.score}`;
    }
    if (question && !afterStable && !section.required && !section.core) {
      afterStable = true; // the first piece a question may change: the stable part ends before it
      piece.classList.add("after-stable");
    }
    box.append(piece);
    if (section.state === "truncated") removed("cut", section.text.slice(section.kept_chars), `cut: ${section.label}`);
  });
}

$("show-removed").addEventListener("change", () => {
  $("fitted").classList.toggle("hide-removed", !$("show-removed").checked);
});

// --- copy ------------------------------------------------------------------------------------

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Plain http on another host is not a secure context: fall back to a selected textarea.
  const area = el("textarea", { value: text, readOnly: true, className: "visually-hidden" });
  document.body.append(area);
  area.select();
  const done = document.execCommand("copy");
  area.remove();
  if (!done) throw new Error("the browser refused to copy");
}

for (const button of document.querySelectorAll("button.copy")) {
  button.addEventListener("click", async () => {
    if (!state.plan) return;
    const what = button.dataset.copy;
    try {
      await copyText(state.plan[what]);
      button.textContent = "Copied";
      $("copy-status").textContent = what === "system" ? "System prompt copied" : "Full prompt copied";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    } catch (error) {
      say("copy", { code: "copy_failed", message: `could not copy: ${error.message}` });
    }
  });
}

// --- start -----------------------------------------------------------------------------------

async function loadProfiles() {
  const answer = await ask("profiles", "v1/profiles");
  if (!answer) return;
  const formats = $("format");
  formats.replaceChildren(new Option("The model's", ""));
  for (const format of answer.formats) formats.append(new Option(format, format));
  // Names users type: the bases of virtual models, then each profile's pattern without its wildcard.
  const names = new Map();
  for (const virtual of answer.virtual_models) names.set(virtual.base, `base of ${virtual.name}`);
  for (const profile of answer.models) {
    const name = profile.match.replace(/[*?].*$/, "");
    if (name && !names.has(name)) {
      names.set(name, `${profile.tokenizer} tokenizer, ${profile.format}, context ${number(profile.context_window)}`);
    }
  }
  const options = $("model-options");
  options.replaceChildren();
  for (const [name, label] of names) options.append(new Option(label, name));
}

let pollTimer = 0;

function start() {
  clearInterval(pollTimer);
  state.roles = null;
  showKeyState();
  loadProfiles().then(loadRoles);
  pollTimer = setInterval(() => {
    if (!document.hidden) loadRoles();
  }, POLL_MS);
}

window.addEventListener("hashchange", () => { // a link to #name, or back and forward
  const name = hashRole();
  if (name && name !== state.role?.name) selectRole(name, false);
});
window.addEventListener("error", (event) => {
  say("page", { code: "page_error", message: `the page hit an error: ${event.message}` });
});
window.addEventListener("unhandledrejection", (event) => {
  say("page", { code: "page_error", message: `the page hit an error: ${event.reason?.message || event.reason}` });
});

start();
