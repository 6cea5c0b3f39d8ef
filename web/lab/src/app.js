// The web lab's page: a small single-page app over the server's /api (see lab/web/app.py).
// Routes: #/ dashboard · #/module/N · #/reviews · #/search/WORDS · #/log. Every action goes to the
// server, which does it through the lab engine; this file only renders. Text is set with
// textContent (never innerHTML) except the module's Markdown, which the server renders with raw
// HTML escaped.

const T = {
  en: {
    roadmap: "Roadmap", progress: "My progress", reviews: "Reviews", references: "References", search: "Search",
    login: "Log in", logout: "Log out", name: "Name", password: "Password", modules: "Modules", done: "done",
    locked: "locked", unlocked: "unlocked", started: "started", passed: "passed · reflect next", skipped: "skipped",
    recent: "Recent test results", due: "Due for review", badges: "Badges", week: "This week", streak: "Streak",
    minutes: "min", days: "days", notes: "Notes", exportLog: "Export the learning log", none: "nothing yet",
    task: "Task", intro: "Introduction", hints: "Hints", reflection: "Reflection", history: "History",
    discussion: "Discussion", goals: "Goals", save: "Save", format: "Format", run: "Run tests", diff: "Diff with the reference",
    review: "Request mentor review", saved: "saved", queued: (p, w) => `waiting: position ${p} in the queue (${w} runs at once)`,
    running: "running in the sandbox…", expected: "expected", actual: "actual", yourLine: "your line",
    nextHint: "Open the next hint", allHints: "every hint is open", stuck: "Stuck? Open a hint (Hints tab).",
    confirmShow: "Show it", cancel: "Cancel", applyRef: "Put the reference in the editor", unchanged: (n) => `… ${n} unchanged lines`,
    same: "the same as the reference", submit: "Submit", modelAnswer: "Model answer", you: "You",
    unlockedNext: (n) => `Module ${n} is unlocked.`, openNext: (n) => `Open module ${n}`, skip: "Skip this module",
    attempt: (i, s) => `attempt ${i + 1}: ${s}`, reopened: (i) => `Attempt ${i + 1}, reopened from the history`,
    reviewSent: "Review requested: a mentor will see it.", comment: "Comment", send: "Send", newThread: "New thread",
    title: "Title", reply: "Reply", noResults: "No match.", similarity: "Similarity to the reference",
    flagged: "Very close to the reference, which was viewed before the pass (advisory, for your own check).",
    notFlagged: "Advisory: your own check only.", addNote: "Add a note", upload: "Load a text file",
    sandboxDegraded: "sandbox degraded", passedMsg: "All tests pass. Next: the reflection (Reflection tab).",
    reflectFirst: "Pass the tests and submit the reflection to unlock the next module.", files: "Files",
    lint: "lint", stopped: "The run stopped", reqs: "Prerequisites", library: "The library code this module rebuilds",
    charts: "Charts", attemptsChart: "Tests passed per attempt", learnerVsRef: "Yours vs the reference",
    stepByStep: "Next change →", previous: "previous change", wholeDiff: "Whole diff", change: "change", section: "section",
    modulesDone: (d, n, p) => `${d} of ${n} modules done (${p}%)`,
    route: "Learning route", fullCourse: "the whole course",
    referencesIntro: "The library code each module rebuilds: the reference you use every day.",
    noCharts: "No measurement yet: the charts show what this module's tests log, after a test run.",
  },
  zh: {
    roadmap: "路线图", progress: "我的进度", reviews: "评审", references: "参考资料", search: "搜索",
    login: "登录", logout: "退出", name: "用户名", password: "密码", modules: "模块", done: "完成",
    locked: "未解锁", unlocked: "已解锁", started: "进行中", passed: "已通过 · 下一步反思", skipped: "已跳过",
    recent: "最近的测试结果", due: "该复习了", badges: "徽章", week: "本周", streak: "连续天数",
    minutes: "分钟", days: "天", notes: "笔记", exportLog: "导出学习日志", none: "暂无",
    task: "任务", intro: "介绍", hints: "提示", reflection: "反思", history: "历史",
    discussion: "讨论", goals: "目标", save: "保存", format: "格式化", run: "运行测试", diff: "与参考答案对比",
    review: "请导师评审", saved: "已保存", queued: (p, w) => `排队中：第 ${p} 位（同时运行 ${w} 个）`,
    running: "正在沙箱里运行……", expected: "期望", actual: "实际", yourLine: "你的代码行",
    nextHint: "打开下一条提示", allHints: "提示已全部打开", stuck: "卡住了？打开一条提示（提示标签）。",
    confirmShow: "仍要显示", cancel: "取消", applyRef: "把参考答案放进编辑器", unchanged: (n) => `…… ${n} 行未改动`,
    same: "与参考答案相同", submit: "提交", modelAnswer: "参考回答", you: "你的回答",
    unlockedNext: (n) => `模块 ${n} 已解锁。`, openNext: (n) => `打开模块 ${n}`, skip: "跳过本模块",
    attempt: (i, s) => `第 ${i + 1} 次：${s}`, reopened: (i) => `第 ${i + 1} 次尝试（从历史中重新打开）`,
    reviewSent: "已请求评审：导师会看到。", comment: "评论", send: "发送", newThread: "新话题",
    title: "标题", reply: "回复", noResults: "没有匹配。", similarity: "与参考答案的相似度",
    flagged: "与参考答案非常接近，且在通过前查看过参考答案（仅供自查）。",
    notFlagged: "仅供自查。", addNote: "添加笔记", upload: "读入文本文件",
    sandboxDegraded: "沙箱降级运行", passedMsg: "全部测试通过。下一步：反思（反思标签）。",
    reflectFirst: "通过测试并提交反思即可解锁下一个模块。", files: "文件",
    lint: "检查", stopped: "运行被停止", reqs: "前置要求", library: "本模块重建的库代码",
    charts: "图表", attemptsChart: "每次尝试通过的测试数", learnerVsRef: "你的实现与参考实现",
    stepByStep: "下一处改动 →", previous: "上一处改动", wholeDiff: "完整对比", change: "改动", section: "部分",
    modulesDone: (d, n, p) => `${n} 个模块中已完成 ${d} 个（${p}%）`,
    route: "学习路线", fullCourse: "完整课程",
    referencesIntro: "每个模块重建的库代码：也就是你每天在用的参考实现。",
    noCharts: "还没有测量数据：运行测试后，这里显示本模块测试记录的数据。",
  },
};
let lang = localStorage.getItem("lab-lang") || (navigator.language.startsWith("zh") ? "zh" : "en");
const t = (k, ...a) => { const v = T[lang][k] ?? T.en[k] ?? k; return typeof v === "function" ? v(...a) : v; };
let me = null;
let editor = null;
let models = {};
let current = null; // the module page's data

// ------------------------------------------------------------------ small helpers
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== false && v != null) e.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat(Infinity)) if (kid != null && kid !== false) e.append(kid);
  return e;
}
async function api(method, path, body) {
  const headers = { "X-Lab-Lang": lang };
  if (method !== "GET") headers["X-CSRF-Token"] = me?.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch("api/" + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) { const e = new Error(data.error || r.statusText); e.status = r.status; e.data = data; throw e; }
  return data;
}
const main = () => document.getElementById("main");
function show(...nodes) { const m = main(); m.replaceChildren(...nodes); }
// Every page render takes a ticket when it starts and draws through it: a render that finishes after a newer
// one began (the learner moved on while it waited for the server) draws nothing and returns false, so a late
// page never covers the current one.
let tickets = 0;
function view() { const mine = ++tickets; return (...nodes) => { if (mine !== tickets) return false; show(...nodes); return true; }; }
function notice(text, kind = "") { return el("div", { class: `notice ${kind}`, role: "status", text }); }
function when(at) { return new Date(at * 1000).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB"); }
function stateWord(s) {
  if (!s.unlocked) return t("locked");
  if (s.done) return t("done");
  if (s.skipped) return t("skipped");
  if (s.passed) return t("passed");
  return s.started ? t("started") : t("unlocked");
}

// ------------------------------------------------------------------ chrome
function chrome() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  const nav = document.getElementById("nav");
  nav.replaceChildren(el("a", { href: "#/", text: t("roadmap") }), el("a", { href: "#/", text: t("progress") }),
    el("a", { href: "#/references", text: t("references") }), el("a", { href: "#/reviews", text: t("reviews") }), el("a", { href: "#/log", text: t("exportLog") }));
  document.getElementById("search").placeholder = t("search");
  document.getElementById("lang").textContent = lang === "zh" ? "English" : "中文";
  const who = document.getElementById("who");
  who.replaceChildren();
  if (me?.mode === "classroom" && me.user) {
    who.append(el("span", { text: `${me.user} (${me.role}) ` }),
      el("button", { type: "button", id: "logout", text: t("logout"), onclick: async () => {
        await api("POST", "logout"); me = await api("GET", "me"); route(); } }));
  }
}
document.getElementById("lang").addEventListener("click", () => {
  lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("lab-lang", lang); chrome(); route();
});
document.getElementById("search-form").addEventListener("submit", (e) => {
  e.preventDefault(); location.hash = "#/search/" + encodeURIComponent(document.getElementById("search").value);
});

// ------------------------------------------------------------------ login
function loginPage() {
  const name = el("input", { id: "login-name", autocomplete: "username", required: true });
  const pw = el("input", { id: "login-password", type: "password", autocomplete: "current-password", required: true });
  const msg = el("p", { id: "login-error", role: "alert" });
  const form = el("form", { id: "login", onsubmit: async (e) => {
    e.preventDefault();
    try { await api("POST", "login", { name: name.value, password: pw.value }); me = await api("GET", "me"); chrome(); route(); }
    catch (err) { msg.textContent = err.message; }
  } }, el("h1", { text: t("login") }), el("label", { for: "login-name", text: t("name") }), el("br"), name, el("br"),
  el("label", { for: "login-password", text: t("password") }), el("br"), pw, el("br"), el("br"),
  el("button", { class: "primary", type: "submit", text: t("login") }), msg);
  view()(form);
  name.focus();
}

// ------------------------------------------------------------------ dashboard
async function dashboard() {
  const draw = view();
  const d = await api("GET", "dashboard");
  const pct = d.total ? Math.round(100 * d.done / d.total) : 0;
  const cards = d.modules.map((m) => {
    const s = m.state;
    const body = [el("strong", { text: `${m.number}. ${m.title}` }), el("br"),
      el("span", { class: `state ${s.done ? "done" : ""}`, text: stateWord(s) }),
      el("div", { class: "muted", text: `${m.minutes ?? "?"} ${t("minutes")} · ${s.attempts} ⟳` })];
    return s.unlocked ? el("a", { class: "card", href: `#/module/${m.number}`, id: `card-${m.number}`, "data-state": stateWord(s) }, body)
      : el("div", { class: "card locked", id: `card-${m.number}`, "aria-disabled": "true", "data-state": stateWord(s) }, body);
  });
  // a learning route: a goal module and every module it builds on (module.yaml builds_on), highlighted
  const route = +(localStorage.getItem("lab-route") || 0);
  const onRoute = new Set();
  const add = (n) => { if (onRoute.has(n)) return; onRoute.add(n); (d.modules.find((m) => m.number === n)?.builds_on || []).forEach(add); };
  if (route) { add(route); onRoute.add(1); }
  cards.forEach((c, i) => { if (route && !onRoute.has(d.modules[i].number)) c.classList.add("off-route"); });
  const routeSelect = el("select", { id: "route", onchange: (e) => { localStorage.setItem("lab-route", e.target.value); dashboard(); } },
    el("option", { value: "0", text: t("fullCourse") }),
    d.modules.map((m) => el("option", { value: String(m.number), selected: m.number === route, text: `→ ${m.number}. ${m.title}` })));
  const list = (items, render) => items.length ? el("ul", {}, items.map((i) => el("li", {}, render(i)))) : el("p", { class: "muted", text: t("none") });
  const chart = el("div", { class: "chart", id: "chart-progress", role: "img", "aria-label": t("attemptsChart") });
  if (!draw(el("h1", { text: t("progress") }),
    el("div", { class: "bar", role: "progressbar", "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100 },
      el("span", { style: `width:${pct}%` })),
    el("p", { id: "progress-text", text: t("modulesDone", d.done, d.total, pct) }),
    el("h2", { text: t("roadmap") }), el("label", { for: "route", text: `${t("route")}: ` }), routeSelect,
    el("div", { class: "cards" }, cards),
    el("div", { class: "row" },
      el("section", {}, el("h2", { text: t("recent") }), list(d.recent, (r) => el("a", { href: `#/module/${r.module}`,
        class: `status-${r.status}`, text: `${r.module}: ${r.status} ${r.passed}/${r.total} · ${when(r.at)}` }))),
      el("section", {}, el("h2", { text: t("due") }), list(d.modules.filter((m) => m.due), (m) =>
        el("a", { href: `#/module/${m.number}`, text: `${m.number}. ${m.title}` })),
      el("h2", { text: t("badges") }), list(d.badges, (b) => el("span", { text: `🏅 ${b.text}` }))),
      el("section", {}, el("h2", { text: t("week") }),
        el("p", { id: "week", text: `${d.week_minutes} ${t("minutes")} · ${t("streak")}: ${d.streak} ${t("days")}` }),
        el("h2", { text: t("notes") }), el("a", { href: "#/log", text: t("exportLog") }))),
    el("h2", { text: t("charts") }), chart)) return;
  drawProgressChart(chart, d);
}

function drawProgressChart(node, d) {
  if (!window.echarts) return;
  const rows = [...d.recent].reverse();
  const c = echarts.init(node);
  c.setOption({ tooltip: { trigger: "axis" }, xAxis: { type: "category", data: rows.map((r) => when(r.at)) },
    yAxis: { type: "value", name: t("attemptsChart") },
    series: [{ type: "line", data: rows.map((r) => r.passed), name: t("attemptsChart") }] });
  c.on("click", (p) => { location.hash = `#/module/${rows[p.dataIndex].module}`; });
}

// ------------------------------------------------------------------ the module page
async function modulePage(n) {
  const draw = view();
  let m;
  try { m = await api("GET", `modules/${n}`); } catch (e) { draw(notice(e.message, "bad"), el("a", { href: "#/", text: t("roadmap") })); return; }
  current = m;
  const left = el("div", { class: "left", id: "left" });
  const panel = el("div", { id: "panel", role: "tabpanel" });
  const tabs = [["task", () => taskTab(m)], ["intro", () => introTab(m)], ["hints", () => hintsTab(m)],
    ["reflection", () => reflectionTab(m)], ["history", () => historyTab(m)], ["charts", () => chartsTab(m)], ["discussion", () => discussionTab(m)]];
  const bar = el("div", { class: "tabs", role: "tablist" }, tabs.map(([k, render]) => el("button", {
    type: "button", role: "tab", id: `tab-${k}`, "aria-selected": "false", text: t(k),
    onclick: (e) => { for (const b of bar.children) b.setAttribute("aria-selected", b === e.currentTarget); panel.replaceChildren(...render()); },
  })));
  left.append(el("h1", { id: "module-title", text: `${m.number}. ${m.title}` }),
    el("p", { class: "muted", id: "module-state", text: stateWord(m.state) }), bar, panel);
  const fileTabs = el("div", { class: "tabs", role: "tablist", "aria-label": t("files") }, m.files.map((f, i) => el("button", {
    type: "button", role: "tab", "aria-selected": i === 0 ? "true" : "false", text: f.name,
    onclick: (e) => { for (const b of fileTabs.children) b.setAttribute("aria-selected", b === e.currentTarget); editor.setModel(models[f.name]); },
  })));
  const saveState = el("span", { class: "muted", id: "save-state", "aria-live": "polite" });
  const tools = el("div", { class: "toolbar" },
    el("button", { type: "button", class: "primary", id: "run", text: t("run"), onclick: runTests }),
    el("button", { type: "button", id: "save", text: t("save"), onclick: saveAll }),
    el("button", { type: "button", id: "format", text: t("format"), onclick: () => editor.getAction("editor.action.formatDocument").run() }),
    el("button", { type: "button", id: "diff", text: t("diff"), onclick: () => showDiff(false) }),
    el("button", { type: "button", id: "request-review", text: t("review"), onclick: requestReview }), saveState);
  const editorBox = el("div", { id: "editor", role: "region", "aria-label": "editor" });
  const testarea = el("section", { id: "testarea", "aria-live": "polite", "aria-label": "tests" });
  const right = el("div", { class: "right" }, fileTabs, tools, editorBox, testarea);
  if (!draw(el("div", { class: "module" }, left, right))) return;
  bar.children[0].click();
  setupEditor(editorBox, m);
}

function taskTab(m) {
  const out = [];
  if (m.goals.length) out.push(el("h2", { text: t("goals") }), el("ul", {}, m.goals.map((g) => el("li", { text: g }))));
  if (m.requires.length) out.push(el("p", { class: "muted", text: `${t("reqs")}: ${m.requires.join(", ")}` }));
  const task = el("div", { id: "task-text" }); task.innerHTML = m.task_html; // rendered by the server, raw HTML escaped
  out.push(task);
  if (m.library.length) out.push(el("h2", { text: t("library") }), el("ul", {}, m.library.map((p) => el("li", {}, el("code", { text: p })))));
  if (!m.state.passed && !m.state.skipped) out.push(el("button", { type: "button", id: "skip", text: t("skip"), onclick: async () => {
    await api("POST", `modules/${m.number}/skip`); location.hash = "#/"; } }));
  return out;
}
function introTab(m) { const d = el("div", { id: "intro-text" }); d.innerHTML = m.intro_html; return [d]; }

function hintsTab(m) {
  // past the last hint: the reference code this module rebuilds (References page), and the diff
  const more = el("p", { class: "muted" }, `${t("library")}: `, el("a", { href: "#/references", text: t("references") }));
  return [...m.tasks.map((task) => {
    const box = el("div", { class: "task-hints", id: `hints-${task.id}` });
    const list = el("div", {}, task.opened.map((h, i) => el("div", { class: "hint", text: `${i + 1}/${task.levels} ${h}` })));
    const btn = el("button", { type: "button", class: "open-hint", disabled: task.opened.length >= task.levels,
      text: task.opened.length >= task.levels ? t("allHints") : t("nextHint"), onclick: async () => {
        try {
          const h = await api("POST", `modules/${m.number}/hints`, { task: task.id });
          task.opened.push(h.text);
          list.append(el("div", { class: "hint", text: `${h.level}/${h.levels} ${h.text}` }));
          if (h.level >= h.levels) { btn.disabled = true; btn.textContent = t("allHints"); }
        } catch (e) { list.append(notice(e.message, "bad")); }
      } });
    box.append(el("h2", { text: task.title }), list, btn);
    return box;
  }), more];
}

function reflectionTab(m) {
  if (m.reflection.length && m.reflection[0].answer) return [reflectionAnswers(m.reflection), ...nextStep(m)];
  const fields = m.reflection.map((q, i) => [el("label", { for: `answer-${i}`, text: `${i + 1}. ${q.question}` }),
    el("textarea", { id: `answer-${i}`, required: true })]);
  const msg = el("div", { role: "alert" });
  const form = el("form", { id: "reflection-form", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const r = await api("POST", `modules/${m.number}/reflection`, { answers: m.reflection.map((_, i) => document.getElementById(`answer-${i}`).value) });
      m.state = r.state; m.reflection = r.answers.map((a) => ({ question: a.question, answer: a.answer, mine: a.mine }));
      m.unlockedNow = r.unlocked;
      form.replaceWith(reflectionAnswers(m.reflection), ...nextStep(m));
      document.getElementById("module-state").textContent = stateWord(m.state);
    } catch (err) { msg.replaceChildren(notice(err.message, "bad")); }
  } }, fields, el("button", { type: "submit", class: "primary", id: "submit-reflection", text: t("submit") }), msg);
  return [form];
}
function reflectionAnswers(items) {
  return el("div", { id: "model-answers" }, items.map((q, i) => el("div", {}, el("h2", { text: `${i + 1}. ${q.question}` }),
    el("p", {}, el("strong", { text: `${t("you")}: ` }), q.mine), el("p", {}, el("strong", { text: `${t("modelAnswer")}: ` }), q.answer))));
}
function nextStep(m) {
  const next = m.number + 1;
  if (m.state.done || m.state.skipped) {
    return [notice(t("unlockedNext", next), "ok"), el("a", { id: "open-next", href: `#/module/${next}`, text: t("openNext", next) })];
  }
  return [notice(t("reflectFirst"))];
}

function historyTab(m) {
  if (!m.attempts.length) return [el("p", { class: "muted", text: t("none") })];
  return [el("ol", { id: "attempts" }, m.attempts.map((a) => el("li", {}, el("button", { type: "button", class: `status-${a.status}`,
    text: `${when(a.at)} · ${a.status} ${a.passed}/${a.total}`, onclick: async () => {
      const r = await api("GET", `modules/${m.number}/attempts/${a.index}`);
      renderResults(r, t("reopened", a.index));
    } }))))];
}

function chartsTab(m) {
  // the metrics the module's tests printed (LAB-METRIC lines, see lab/web/charts.py), latest attempt
  const box = el("div", { id: "charts" });
  const log = el("pre", { id: "chart-log", "aria-live": "polite" });
  (async () => {
    const c = await api("GET", `modules/${m.number}/charts`);
    if (c.attempt === null) { box.replaceChildren(el("p", { class: "muted", text: t("noCharts") })); return; }
    box.replaceChildren(el("p", { class: "muted", text: t("attempt", c.attempt, "") }));
    const chart = (id, label, option, onClick, setup) => {
      const node = el("div", { class: "chart", id, role: "img", "aria-label": label });
      box.append(el("h2", { text: label }), node);
      const ch = echarts.init(node); ch.setOption({ tooltip: {}, ...option });
      if (onClick) ch.on("click", onClick);
      if (setup) setup(ch);
    };
    // a click anywhere on a curve's chart opens the log of the nearest point (not only on its dot)
    Object.entries(c.line).forEach(([name, pts], i) => chart(`chart-line-${i}`, name,
      { tooltip: { trigger: "axis" }, xAxis: { type: "value", name: "step" }, yAxis: { type: "value", name },
        series: [{ type: "line", name, data: pts.map((p) => [p.step, p.value]), symbolSize: 8 }] }, null,
      (ch) => ch.getZr().on("click", (e) => {
        const [x] = ch.convertFromPixel({ seriesIndex: 0 }, [e.offsetX, e.offsetY]);
        const p = pts.reduce((a, b) => (Math.abs(b.step - x) < Math.abs(a.step - x) ? b : a));
        log.textContent = `${name} @ ${p.step} = ${p.value}  (${p.test})\n` + p.log.join("\n");
      })));
    Object.entries(c.radar).forEach(([name, axes], i) => chart(`chart-radar-${i}`, name,
      { radar: { indicator: axes.map((a) => ({ name: a.axis, max: Math.max(1, ...axes.map((x) => x.value)) })) },
        series: [{ type: "radar", data: [{ value: axes.map((a) => a.value), name }] }] }));
    Object.entries(c.heatmap).forEach(([name, g], i) => chart(`chart-heatmap-${i}`, name,
      { xAxis: { type: "category", data: g.x }, yAxis: { type: "category", data: g.y },
        visualMap: { min: Math.min(...g.cells.map((x) => x[2])), max: Math.max(...g.cells.map((x) => x[2])), calculable: true, orient: "horizontal", left: "center", bottom: 0 },
        grid: { bottom: 70 }, series: [{ type: "heatmap", data: g.cells, label: { show: true } }] }));
    if (c.compare.length) chart("chart-compare", t("learnerVsRef"),
      { legend: {}, xAxis: { type: "category", data: c.compare.map((x) => x.name) }, yAxis: { type: "value" },
        series: [{ type: "line", name: t("you"), data: c.compare.map((x) => x.mine) },
          { type: "line", name: "reference", data: c.compare.map((x) => x.reference) }] });
    box.append(log);
  })().catch((e) => box.replaceChildren(notice(e.message, "bad")));
  return [box];
}

function discussionTab(m) {
  const box = el("div", { id: "discussion" });
  const load = async () => {
    const d = await api("GET", `modules/${m.number}/posts`);
    box.replaceChildren(...d.threads.map((th) => el("article", { class: "test" }, el("strong", { text: th.title }),
      el("span", { class: "muted", text: ` — ${th.user}, ${when(th.at)}` }), el("p", { text: th.text }),
      th.replies.map((r) => el("p", { class: "muted", text: `↳ ${r.user}: ${r.text}` })),
      replyForm(th.id))), newThread());
  };
  const replyForm = (id) => { const ta = el("input", { "aria-label": t("reply") });
    return el("form", { onsubmit: async (e) => { e.preventDefault(); await api("POST", `modules/${m.number}/posts`, { parent: id, text: ta.value }); load(); } },
      ta, el("button", { type: "submit", text: t("reply") })); };
  const newThread = () => { const title = el("input", { id: "thread-title", "aria-label": t("title"), placeholder: t("title") });
    const text = el("textarea", { id: "thread-text", "aria-label": t("newThread") });
    return el("form", { onsubmit: async (e) => { e.preventDefault(); await api("POST", `modules/${m.number}/posts`, { title: title.value, text: text.value }); load(); } },
      el("h2", { text: t("newThread") }), title, text, el("button", { type: "submit", text: t("send") })); };
  load();
  const note = el("textarea", { id: "note-text", "aria-label": t("addNote") });
  const file = el("input", { type: "file", accept: ".md,.txt", "aria-label": t("upload"), onchange: async (e) => {
    note.value = await e.target.files[0].text(); } });
  const notes = el("form", { onsubmit: async (e) => { e.preventDefault(); await api("POST", `modules/${m.number}/notes`, { text: note.value });
    note.value = ""; notes.append(notice(t("saved"), "ok")); } }, el("h2", { text: t("notes") }), note, file,
    el("button", { type: "submit", text: t("addNote") }));
  return [box, notes];
}

// ------------------------------------------------------------------ the editor
function setupEditor(node, m) {
  for (const mdl of Object.values(models)) mdl.dispose();
  models = {};
  if (editor) editor.dispose();
  for (const f of m.files) models[f.name] = monaco.editor.createModel(f.content, "python", monaco.Uri.parse(`file:///${m.number}/${f.name}`));
  editor = monaco.editor.create(node, { model: models[m.files[0].name], automaticLayout: true, minimap: { enabled: false },
    fontSize: 14, scrollBeyondLastLine: false, tabSize: 4, insertSpaces: true });
  editor.addCommand(monaco.KeyMod.CtrlCmd | monaco.KeyCode.KeyS, saveAll);
  let timer = null;
  for (const [name, mdl] of Object.entries(models)) {
    mdl.onDidChangeContent(() => {
      document.getElementById("save-state").textContent = "…";
      clearTimeout(timer); timer = setTimeout(() => { saveAll(); lint(name, mdl); }, 800);
    });
    lint(name, mdl);
  }
}
async function saveAll() {
  for (const [name, mdl] of Object.entries(models)) {
    await api("PUT", `modules/${current.number}/files/${encodeURIComponent(name)}`, { content: mdl.getValue() });
  }
  const s = document.getElementById("save-state"); if (s) s.textContent = t("saved");
}
async function lint(name, mdl) {
  try {
    const r = await api("POST", "editor/lint", { source: mdl.getValue(), name });
    monaco.editor.setModelMarkers(mdl, "ruff", r.findings.map((f) => ({ startLineNumber: f.line, startColumn: f.column,
      endLineNumber: f.end_line, endColumn: f.end_column, message: `${f.code} ${f.message}`, severity: monaco.MarkerSeverity.Warning })));
  } catch (e) { /* lint is optional (no ruff installed): the editor works without it */ }
}
function registerProviders() {
  monaco.languages.registerCompletionItemProvider("python", { triggerCharacters: ["."], provideCompletionItems: async (model, pos) => {
    try {
      const r = await api("POST", "editor/complete", { source: model.getValue(), line: pos.lineNumber, column: pos.column - 1 });
      const word = model.getWordUntilPosition(pos);
      const range = { startLineNumber: pos.lineNumber, endLineNumber: pos.lineNumber, startColumn: word.startColumn, endColumn: word.endColumn };
      const kinds = monaco.languages.CompletionItemKind;
      const kind = { function: kinds.Function, class: kinds.Class, module: kinds.Module, keyword: kinds.Keyword, instance: kinds.Variable };
      return { suggestions: r.items.map((i) => ({ label: i.label, kind: kind[i.kind] ?? kinds.Text, detail: i.detail, insertText: i.label, range })) };
    } catch (e) { return { suggestions: [] }; }
  } });
  monaco.languages.registerDocumentFormattingEditProvider("python", { provideDocumentFormattingEdits: async (model) => {
    const r = await api("POST", "editor/format", { source: model.getValue() });
    return [{ range: model.getFullModelRange(), text: r.source }];
  } });
}

// ------------------------------------------------------------------ tests
async function runTests() {
  const area = document.getElementById("testarea");
  const btn = document.getElementById("run");
  btn.disabled = true;
  const state = el("p", { id: "run-state", text: "…" });
  const live = el("pre", { id: "live" });
  area.replaceChildren(state, live);
  try {
    await saveAll();
    const job = await api("POST", `modules/${current.number}/runs`);
    await new Promise((resolve) => {
      const src = new EventSource(`api/runs/${job.id}/events?lang=${lang}`);
      src.addEventListener("queue", (e) => { const q = JSON.parse(e.data); state.textContent = q.position ? t("queued", q.position, q.workers) : t("running"); });
      src.addEventListener("start", () => { state.textContent = t("running"); });
      src.addEventListener("output", (e) => {
        live.textContent += JSON.parse(e.data).text;
        if (live.textContent.length > 70000) live.textContent = live.textContent.slice(-60000);
        live.scrollTop = live.scrollHeight;
      });
      src.addEventListener("result", (e) => { src.close(); renderResults(JSON.parse(e.data)); resolve(); });
      src.addEventListener("failed", (e) => { src.close(); area.append(notice(JSON.parse(e.data).error, "bad")); resolve(); });
      src.onerror = () => { if (src.readyState === EventSource.CLOSED) resolve(); };
    });
  } catch (e) {
    area.append(notice(e.message, "bad"));
  } finally { btn.disabled = false; }
}

function lineLinks(text) {
  // "(your bpe.py, line 14)" / "（你的 bpe.py 第 14 行）": a button that shows the line in the editor
  const out = [];
  const re = /(your ([\w./-]+\.py), line (\d+)|你的 ([\w./-]+\.py) 第 (\d+) 行)/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    out.push(text.slice(last, m.index));
    const file = m[2] || m[4], line = +(m[3] || m[5]);
    out.push(el("button", { type: "button", class: "line-link", text: m[0], onclick: () => goToLine(file, line) }));
    last = m.index + m[0].length;
  }
  out.push(text.slice(last));
  return out;
}
function goToLine(file, line) {
  if (models[file]) editor.setModel(models[file]);
  editor.revealLineInCenter(line); editor.setPosition({ lineNumber: line, column: 1 }); editor.focus();
  editor.createDecorationsCollection([{ range: new monaco.Range(line, 1, line, 1), options: { isWholeLine: true, className: "hint" } }]);
}

function renderResults(r, heading) {
  const area = document.getElementById("testarea");
  const keep = heading ? [] : [...area.querySelectorAll("#run-state, #live")];
  const tests = r.tests || [];
  const passed = tests.filter((x) => x.status === "pass").length;
  const head = el("h2", { id: "result-status", class: `status-${r.status}`, "data-status": r.status,
    text: `${heading ? heading + " — " : ""}${r.status} · ${passed}/${tests.length} · ${(r.duration_s ?? 0).toFixed(1)} s` });
  const items = [];
  const seen = new Set();
  for (const x of tests) {
    const item = el("div", { class: `test test-${x.status}` },
      el("span", { class: `status-${x.status}`, text: { pass: "✓ ", fail: "✗ ", error: "! " }[x.status] }),
      el("span", { class: "name", text: x.name }), x.hidden ? el("span", { class: "muted", text: " (hidden)" }) : null);
    if (x.status !== "pass") {
      if (seen.has(x.message)) item.append(el("span", { class: "muted", text: " (as above)" }));
      else {
        seen.add(x.message);
        item.append(el("pre", { class: "message" }, lineLinks(x.message)));
        const m = /expected ([\s\S]*?), got ([\s\S]*?)(?:\. |\n|$)/.exec(x.message);
        if (m) item.append(el("table", { class: "eva" }, el("tr", {}, el("th", { text: t("expected") }), el("td", { class: "expected", text: m[1] })),
          el("tr", {}, el("th", { text: t("actual") }), el("td", { class: "actual", text: m[2] }))));
        if (x.output?.trim()) item.append(el("details", {}, el("summary", { text: "output" }), el("pre", { text: x.output })));
      }
    } else if (x.output?.trim()) item.append(el("details", {}, el("summary", { text: "output" }), el("pre", { text: x.output })));
    items.push(item);
  }
  const extra = [];
  if (!tests.length && r.message) extra.push(notice(r.message, "bad"));
  else if (r.status === "error" && r.error_class && ["timeout", "cpu", "memory", "output", "killed"].includes(r.error_class)) extra.push(notice(r.message, "bad"));
  if (r.sandbox?.degraded) extra.push(el("p", { class: "muted", text: `${t("sandboxDegraded")}: ${Object.entries(r.sandbox.layers).filter(([, v]) => v !== "on").map(([k]) => k).join(", ")}` }));
  if (!heading) {
    if (r.status === "pass") extra.push(notice(t("passedMsg"), "ok"), ...(r.unlocked ? [notice(t("unlockedNext", current.number + 1), "ok")] : []));
    else extra.push(el("p", { text: t("stuck") }));
  }
  area.replaceChildren(...keep, head, ...extra, ...items);
  if (!heading) refreshState();
}
async function refreshState() {
  const m = await api("GET", `modules/${current.number}`);
  current.state = m.state; current.attempts = m.attempts;
  document.getElementById("module-state").textContent = stateWord(m.state);
}

// ------------------------------------------------------------------ the diff
async function showDiff(confirm) {
  const area = document.getElementById("testarea");
  let d;
  try { await saveAll(); d = await api("POST", `modules/${current.number}/diff`, { confirm }); }
  catch (e) {
    if (e.status === 409 && e.data.confirm) {
      area.replaceChildren(el("div", { id: "diff-confirm", class: "notice" }, el("p", { text: e.message }),
        el("button", { type: "button", id: "diff-yes", text: t("confirmShow"), onclick: () => showDiff(true) }), " ",
        el("button", { type: "button", text: t("cancel"), onclick: () => area.replaceChildren() })));
      document.getElementById("diff-yes").focus();
    } else area.replaceChildren(notice(e.message, "bad"));
    return;
  }
  const row = (r) => r.kind === "fold" ? el("div", { class: "fold", text: t("unchanged", r.count) })
    : el("div", { class: r.kind, text: `${r.kind === "add" ? "+" : r.kind === "del" ? "-" : " "} ${r.text}` });
  const blocks = d.files.map((f) => {
    // step-by-step: one change at a time (consecutive added/removed lines), named by its section
    const hunks = [];
    f.rows.forEach((r, i) => { if (r.kind === "add" || r.kind === "del") {
      const last = hunks[hunks.length - 1];
      if (last && last.end === i) { last.end = i + 1; } else hunks.push({ start: i, end: i + 1, section: r.section }); } });
    const view = el("div", { class: "diff", id: `diff-${f.file}` }, f.rows.map(row));
    const where = el("span", { class: "muted", "aria-live": "polite" });
    let step = -1;
    const go = (k) => {
      step = Math.max(0, Math.min(hunks.length - 1, k));
      const h = hunks[step];
      view.replaceChildren(...f.rows.slice(Math.max(0, h.start - 3), h.end + 3).map(row));
      where.textContent = `${t("change")} ${step + 1}/${hunks.length}` + (h.section ? ` · ${t("section")} ${h.section}` : "");
    };
    const steps = hunks.length ? el("div", { class: "toolbar" },
      el("button", { type: "button", class: "diff-step", text: t("stepByStep"), onclick: () => go(step + 1) }),
      el("button", { type: "button", text: "←", "aria-label": t("previous"), onclick: () => go(step - 1) }),
      el("button", { type: "button", text: t("wholeDiff"), onclick: () => { step = -1; view.replaceChildren(...f.rows.map(row)); where.textContent = ""; } }),
      where) : null;
    return el("section", { class: "diff-file" }, el("h2", { text: f.file }),
      f.same ? el("p", { text: t("same") }) : [steps, view],
      el("button", { type: "button", class: "apply-reference", text: t("applyRef"), onclick: () => { models[f.file].setValue(f.reference); } }));
  });
  const sim = el("div", { id: "similarity" });
  area.replaceChildren(el("h2", { text: t("diff") }), ...blocks, sim);
  try {
    const s = await api("GET", `modules/${current.number}/similarity`);
    sim.append(el("p", { class: "muted", text: `${t("similarity")}: ` + s.files.map((f) => `${f.file} tokens ${f.tokens}, AST ${f.ast}`).join("; ") }),
      el("p", { class: "muted", text: s.flagged ? t("flagged") : t("notFlagged") }));
  } catch (e) { /* advisory */ }
}

async function requestReview() {
  const area = document.getElementById("testarea");
  try { await saveAll(); await api("POST", `modules/${current.number}/review`, { message: "" }); area.prepend(notice(t("reviewSent"), "ok")); }
  catch (e) { area.prepend(notice(e.message, "bad")); }
}

// ------------------------------------------------------------------ reviews, search, log
async function referencesPage() {
  const draw = view();
  const d = await api("GET", "dashboard");
  draw(el("h1", { text: t("references") }), el("p", { class: "muted", text: t("referencesIntro") }),
    el("ul", { id: "references" }, d.modules.map((m) => el("li", {}, el("strong", { text: `${m.number}. ${m.title}` }),
      el("ul", {}, m.library.map((p) => el("li", {}, el("code", { text: `src/llm_foundry/${p}` }))))))));
}

async function reviewsPage() {
  const draw = view();
  const d = await api("GET", "reviews");
  draw(el("h1", { text: t("reviews") }), d.reviews.length ? el("div", { id: "reviews" }, d.reviews.map((r) => {
    const text = el("textarea", { "aria-label": t("comment") });
    return el("article", { class: "test review", "data-user": r.user },
      el("h2", { text: `${r.user} · ${r.module} · ${when(r.at)} · ${r.status ?? ""}` }), r.message ? el("p", { text: r.message }) : null,
      Object.entries(r.files).map(([name, code]) => el("details", {}, el("summary", { text: name }), el("pre", { text: code }))),
      r.comments.map((c) => el("p", { class: "comment", text: `${c.user}: ${c.text}` })),
      el("form", { onsubmit: async (e) => { e.preventDefault(); await api("POST", `reviews/${r.id}/comments`, { text: text.value }); reviewsPage(); } },
        text, el("button", { type: "submit", text: t("comment") })));
  })) : el("p", { class: "muted", text: t("none") }));
}
async function searchPage(q) {
  const draw = view();
  const d = await api("GET", `search?q=${encodeURIComponent(q)}`);
  draw(el("h1", { text: `${t("search")}: ${q}` }), d.results.length ? el("ul", { id: "search-results" }, d.results.map((r) =>
    el("li", {}, el("a", { href: `#/module/${r.module}`, text: `${r.module}. ${r.title}` }), el("span", { class: "muted", text: ` (${r.kind}) ${r.text}` }))))
    : el("p", { text: t("noResults") }));
}
async function logPage() {
  const draw = view();
  const text = await api("GET", "log");
  const blob = new Blob([text], { type: "text/markdown" });
  draw(el("h1", { text: t("exportLog") }), el("a", { href: URL.createObjectURL(blob), download: "learning-log.md", id: "log-download", text: "learning-log.md" }),
    el("pre", { id: "log", text }));
}

// ------------------------------------------------------------------ routing
async function route() {
  const hash = location.hash || "#/";
  if (me.mode === "classroom" && !me.user) return loginPage();
  try {
    let m;
    if ((m = /^#\/module\/(\d+)/.exec(hash))) await modulePage(+m[1]);
    else if (hash.startsWith("#/reviews")) await reviewsPage();
    else if (hash.startsWith("#/references")) await referencesPage();
    else if ((m = /^#\/search\/(.*)/.exec(hash))) await searchPage(decodeURIComponent(m[1]));
    else if (hash.startsWith("#/log")) await logPage();
    else await dashboard();
  } catch (e) {
    if (e.status === 401) { me = await api("GET", "me"); return loginPage(); }
    show(notice(e.message, "bad"));
  }
  main().focus();
}
window.addEventListener("hashchange", route);
window.addEventListener("load", async () => {
  registerProviders();
  me = await api("GET", "me");
  chrome();
  await route();
  document.body.dataset.ready = "1";
});
