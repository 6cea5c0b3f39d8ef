(() => {
  // src/app.js
  var T = {
    en: {
      roadmap: "Roadmap",
      progress: "My progress",
      reviews: "Reviews",
      references: "References",
      search: "Search",
      login: "Log in",
      logout: "Log out",
      name: "Name",
      password: "Password",
      modules: "Modules",
      done: "done",
      locked: "locked",
      unlocked: "unlocked",
      started: "started",
      passed: "passed \xB7 reflect next",
      skipped: "skipped",
      recent: "Recent test results",
      due: "Due for review",
      badges: "Badges",
      week: "This week",
      streak: "Streak",
      minutes: "min",
      days: "days",
      notes: "Notes",
      exportLog: "Export the learning log",
      none: "nothing yet",
      task: "Task",
      intro: "Introduction",
      hints: "Hints",
      reflection: "Reflection",
      history: "History",
      discussion: "Discussion",
      goals: "Goals",
      save: "Save",
      format: "Format",
      run: "Run tests",
      diff: "Diff with the reference",
      review: "Request mentor review",
      saved: "saved",
      queued: (p, w) => `waiting: position ${p} in the queue (${w} runs at once)`,
      running: "running in the sandbox\u2026",
      expected: "expected",
      actual: "actual",
      yourLine: "your line",
      nextHint: "Open the next hint",
      allHints: "every hint is open",
      stuck: "Stuck? Open a hint (Hints tab).",
      confirmShow: "Show it",
      cancel: "Cancel",
      applyRef: "Put the reference in the editor",
      unchanged: (n) => `\u2026 ${n} unchanged lines`,
      same: "the same as the reference",
      submit: "Submit",
      modelAnswer: "Model answer",
      you: "You",
      unlockedNext: (n) => `Module ${n} is unlocked.`,
      openNext: (n) => `Open module ${n}`,
      skip: "Skip this module",
      attempt: (i, s) => `attempt ${i + 1}: ${s}`,
      reopened: (i) => `Attempt ${i + 1}, reopened from the history`,
      reviewSent: "Review requested: a mentor will see it.",
      comment: "Comment",
      send: "Send",
      newThread: "New thread",
      title: "Title",
      reply: "Reply",
      noResults: "No match.",
      similarity: "Similarity to the reference",
      flagged: "Very close to the reference, which was viewed before the pass (advisory, for your own check).",
      notFlagged: "Advisory: your own check only.",
      addNote: "Add a note",
      upload: "Load a text file",
      sandboxDegraded: "sandbox degraded",
      passedMsg: "All tests pass. Next: the reflection (Reflection tab).",
      reflectFirst: "Pass the tests and submit the reflection to unlock the next module.",
      files: "Files",
      lint: "lint",
      stopped: "The run stopped",
      reqs: "Prerequisites",
      library: "The library code this module rebuilds",
      charts: "Charts",
      attemptsChart: "Tests passed per attempt",
      learnerVsRef: "Yours vs the reference",
      stepByStep: "Next change \u2192",
      previous: "previous change",
      wholeDiff: "Whole diff",
      change: "change",
      section: "section",
      modulesDone: (d, n, p) => `${d} of ${n} modules done (${p}%)`,
      route: "Learning route",
      fullCourse: "the whole course",
      referencesIntro: "The library code each module rebuilds: the reference you use every day.",
      noCharts: "No measurement yet: the charts show what this module's tests log, after a test run."
    },
    zh: {
      roadmap: "\u8DEF\u7EBF\u56FE",
      progress: "\u6211\u7684\u8FDB\u5EA6",
      reviews: "\u8BC4\u5BA1",
      references: "\u53C2\u8003\u8D44\u6599",
      search: "\u641C\u7D22",
      login: "\u767B\u5F55",
      logout: "\u9000\u51FA",
      name: "\u7528\u6237\u540D",
      password: "\u5BC6\u7801",
      modules: "\u6A21\u5757",
      done: "\u5B8C\u6210",
      locked: "\u672A\u89E3\u9501",
      unlocked: "\u5DF2\u89E3\u9501",
      started: "\u8FDB\u884C\u4E2D",
      passed: "\u5DF2\u901A\u8FC7 \xB7 \u4E0B\u4E00\u6B65\u53CD\u601D",
      skipped: "\u5DF2\u8DF3\u8FC7",
      recent: "\u6700\u8FD1\u7684\u6D4B\u8BD5\u7ED3\u679C",
      due: "\u8BE5\u590D\u4E60\u4E86",
      badges: "\u5FBD\u7AE0",
      week: "\u672C\u5468",
      streak: "\u8FDE\u7EED\u5929\u6570",
      minutes: "\u5206\u949F",
      days: "\u5929",
      notes: "\u7B14\u8BB0",
      exportLog: "\u5BFC\u51FA\u5B66\u4E60\u65E5\u5FD7",
      none: "\u6682\u65E0",
      task: "\u4EFB\u52A1",
      intro: "\u4ECB\u7ECD",
      hints: "\u63D0\u793A",
      reflection: "\u53CD\u601D",
      history: "\u5386\u53F2",
      discussion: "\u8BA8\u8BBA",
      goals: "\u76EE\u6807",
      save: "\u4FDD\u5B58",
      format: "\u683C\u5F0F\u5316",
      run: "\u8FD0\u884C\u6D4B\u8BD5",
      diff: "\u4E0E\u53C2\u8003\u7B54\u6848\u5BF9\u6BD4",
      review: "\u8BF7\u5BFC\u5E08\u8BC4\u5BA1",
      saved: "\u5DF2\u4FDD\u5B58",
      queued: (p, w) => `\u6392\u961F\u4E2D\uFF1A\u7B2C ${p} \u4F4D\uFF08\u540C\u65F6\u8FD0\u884C ${w} \u4E2A\uFF09`,
      running: "\u6B63\u5728\u6C99\u7BB1\u91CC\u8FD0\u884C\u2026\u2026",
      expected: "\u671F\u671B",
      actual: "\u5B9E\u9645",
      yourLine: "\u4F60\u7684\u4EE3\u7801\u884C",
      nextHint: "\u6253\u5F00\u4E0B\u4E00\u6761\u63D0\u793A",
      allHints: "\u63D0\u793A\u5DF2\u5168\u90E8\u6253\u5F00",
      stuck: "\u5361\u4F4F\u4E86\uFF1F\u6253\u5F00\u4E00\u6761\u63D0\u793A\uFF08\u63D0\u793A\u6807\u7B7E\uFF09\u3002",
      confirmShow: "\u4ECD\u8981\u663E\u793A",
      cancel: "\u53D6\u6D88",
      applyRef: "\u628A\u53C2\u8003\u7B54\u6848\u653E\u8FDB\u7F16\u8F91\u5668",
      unchanged: (n) => `\u2026\u2026 ${n} \u884C\u672A\u6539\u52A8`,
      same: "\u4E0E\u53C2\u8003\u7B54\u6848\u76F8\u540C",
      submit: "\u63D0\u4EA4",
      modelAnswer: "\u53C2\u8003\u56DE\u7B54",
      you: "\u4F60\u7684\u56DE\u7B54",
      unlockedNext: (n) => `\u6A21\u5757 ${n} \u5DF2\u89E3\u9501\u3002`,
      openNext: (n) => `\u6253\u5F00\u6A21\u5757 ${n}`,
      skip: "\u8DF3\u8FC7\u672C\u6A21\u5757",
      attempt: (i, s) => `\u7B2C ${i + 1} \u6B21\uFF1A${s}`,
      reopened: (i) => `\u7B2C ${i + 1} \u6B21\u5C1D\u8BD5\uFF08\u4ECE\u5386\u53F2\u4E2D\u91CD\u65B0\u6253\u5F00\uFF09`,
      reviewSent: "\u5DF2\u8BF7\u6C42\u8BC4\u5BA1\uFF1A\u5BFC\u5E08\u4F1A\u770B\u5230\u3002",
      comment: "\u8BC4\u8BBA",
      send: "\u53D1\u9001",
      newThread: "\u65B0\u8BDD\u9898",
      title: "\u6807\u9898",
      reply: "\u56DE\u590D",
      noResults: "\u6CA1\u6709\u5339\u914D\u3002",
      similarity: "\u4E0E\u53C2\u8003\u7B54\u6848\u7684\u76F8\u4F3C\u5EA6",
      flagged: "\u4E0E\u53C2\u8003\u7B54\u6848\u975E\u5E38\u63A5\u8FD1\uFF0C\u4E14\u5728\u901A\u8FC7\u524D\u67E5\u770B\u8FC7\u53C2\u8003\u7B54\u6848\uFF08\u4EC5\u4F9B\u81EA\u67E5\uFF09\u3002",
      notFlagged: "\u4EC5\u4F9B\u81EA\u67E5\u3002",
      addNote: "\u6DFB\u52A0\u7B14\u8BB0",
      upload: "\u8BFB\u5165\u6587\u672C\u6587\u4EF6",
      sandboxDegraded: "\u6C99\u7BB1\u964D\u7EA7\u8FD0\u884C",
      passedMsg: "\u5168\u90E8\u6D4B\u8BD5\u901A\u8FC7\u3002\u4E0B\u4E00\u6B65\uFF1A\u53CD\u601D\uFF08\u53CD\u601D\u6807\u7B7E\uFF09\u3002",
      reflectFirst: "\u901A\u8FC7\u6D4B\u8BD5\u5E76\u63D0\u4EA4\u53CD\u601D\u5373\u53EF\u89E3\u9501\u4E0B\u4E00\u4E2A\u6A21\u5757\u3002",
      files: "\u6587\u4EF6",
      lint: "\u68C0\u67E5",
      stopped: "\u8FD0\u884C\u88AB\u505C\u6B62",
      reqs: "\u524D\u7F6E\u8981\u6C42",
      library: "\u672C\u6A21\u5757\u91CD\u5EFA\u7684\u5E93\u4EE3\u7801",
      charts: "\u56FE\u8868",
      attemptsChart: "\u6BCF\u6B21\u5C1D\u8BD5\u901A\u8FC7\u7684\u6D4B\u8BD5\u6570",
      learnerVsRef: "\u4F60\u7684\u5B9E\u73B0\u4E0E\u53C2\u8003\u5B9E\u73B0",
      stepByStep: "\u4E0B\u4E00\u5904\u6539\u52A8 \u2192",
      previous: "\u4E0A\u4E00\u5904\u6539\u52A8",
      wholeDiff: "\u5B8C\u6574\u5BF9\u6BD4",
      change: "\u6539\u52A8",
      section: "\u90E8\u5206",
      modulesDone: (d, n, p) => `${n} \u4E2A\u6A21\u5757\u4E2D\u5DF2\u5B8C\u6210 ${d} \u4E2A\uFF08${p}%\uFF09`,
      route: "\u5B66\u4E60\u8DEF\u7EBF",
      fullCourse: "\u5B8C\u6574\u8BFE\u7A0B",
      referencesIntro: "\u6BCF\u4E2A\u6A21\u5757\u91CD\u5EFA\u7684\u5E93\u4EE3\u7801\uFF1A\u4E5F\u5C31\u662F\u4F60\u6BCF\u5929\u5728\u7528\u7684\u53C2\u8003\u5B9E\u73B0\u3002",
      noCharts: "\u8FD8\u6CA1\u6709\u6D4B\u91CF\u6570\u636E\uFF1A\u8FD0\u884C\u6D4B\u8BD5\u540E\uFF0C\u8FD9\u91CC\u663E\u793A\u672C\u6A21\u5757\u6D4B\u8BD5\u8BB0\u5F55\u7684\u6570\u636E\u3002"
    }
  };
  var lang = localStorage.getItem("lab-lang") || (navigator.language.startsWith("zh") ? "zh" : "en");
  var t = (k, ...a) => {
    const v = T[lang][k] ?? T.en[k] ?? k;
    return typeof v === "function" ? v(...a) : v;
  };
  var me = null;
  var editor = null;
  var models = {};
  var current = null;
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
    if (body !== void 0) headers["Content-Type"] = "application/json";
    const r = await fetch("api/" + path, { method, headers, body: body === void 0 ? void 0 : JSON.stringify(body) });
    const data = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
    if (!r.ok) {
      const e = new Error(data.error || r.statusText);
      e.status = r.status;
      e.data = data;
      throw e;
    }
    return data;
  }
  var main = () => document.getElementById("main");
  function show(...nodes) {
    const m = main();
    m.replaceChildren(...nodes);
  }
  var tickets = 0;
  function view() {
    const mine = ++tickets;
    return (...nodes) => {
      if (mine !== tickets) return false;
      show(...nodes);
      return true;
    };
  }
  function notice(text, kind = "") {
    return el("div", { class: `notice ${kind}`, role: "status", text });
  }
  function when(at) {
    return new Date(at * 1e3).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB");
  }
  function stateWord(s) {
    if (!s.unlocked) return t("locked");
    if (s.done) return t("done");
    if (s.skipped) return t("skipped");
    if (s.passed) return t("passed");
    return s.started ? t("started") : t("unlocked");
  }
  function chrome() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    const nav = document.getElementById("nav");
    nav.replaceChildren(
      el("a", { href: "#/", text: t("roadmap") }),
      el("a", { href: "#/", text: t("progress") }),
      el("a", { href: "#/references", text: t("references") }),
      el("a", { href: "#/reviews", text: t("reviews") }),
      el("a", { href: "#/log", text: t("exportLog") })
    );
    document.getElementById("search").placeholder = t("search");
    document.getElementById("lang").textContent = lang === "zh" ? "English" : "\u4E2D\u6587";
    const who = document.getElementById("who");
    who.replaceChildren();
    if (me?.mode === "classroom" && me.user) {
      who.append(
        el("span", { text: `${me.user} (${me.role}) ` }),
        el("button", { type: "button", id: "logout", text: t("logout"), onclick: async () => {
          await api("POST", "logout");
          me = await api("GET", "me");
          route();
        } })
      );
    }
  }
  document.getElementById("lang").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("lab-lang", lang);
    chrome();
    route();
  });
  document.getElementById("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = "#/search/" + encodeURIComponent(document.getElementById("search").value);
  });
  function loginPage() {
    const name = el("input", { id: "login-name", autocomplete: "username", required: true });
    const pw = el("input", { id: "login-password", type: "password", autocomplete: "current-password", required: true });
    const msg = el("p", { id: "login-error", role: "alert" });
    const form = el(
      "form",
      { id: "login", onsubmit: async (e) => {
        e.preventDefault();
        try {
          await api("POST", "login", { name: name.value, password: pw.value });
          me = await api("GET", "me");
          chrome();
          route();
        } catch (err) {
          msg.textContent = err.message;
        }
      } },
      el("h1", { text: t("login") }),
      el("label", { for: "login-name", text: t("name") }),
      el("br"),
      name,
      el("br"),
      el("label", { for: "login-password", text: t("password") }),
      el("br"),
      pw,
      el("br"),
      el("br"),
      el("button", { class: "primary", type: "submit", text: t("login") }),
      msg
    );
    view()(form);
    name.focus();
  }
  async function dashboard() {
    const draw = view();
    const d = await api("GET", "dashboard");
    const pct = d.total ? Math.round(100 * d.done / d.total) : 0;
    const cards = d.modules.map((m) => {
      const s = m.state;
      const body = [
        el("strong", { text: `${m.number}. ${m.title}` }),
        el("br"),
        el("span", { class: `state ${s.done ? "done" : ""}`, text: stateWord(s) }),
        el("div", { class: "muted", text: `${m.minutes ?? "?"} ${t("minutes")} \xB7 ${s.attempts} \u27F3` })
      ];
      return s.unlocked ? el("a", { class: "card", href: `#/module/${m.number}`, id: `card-${m.number}`, "data-state": stateWord(s) }, body) : el("div", { class: "card locked", id: `card-${m.number}`, "aria-disabled": "true", "data-state": stateWord(s) }, body);
    });
    const route2 = +(localStorage.getItem("lab-route") || 0);
    const onRoute = /* @__PURE__ */ new Set();
    const add = (n) => {
      if (onRoute.has(n)) return;
      onRoute.add(n);
      (d.modules.find((m) => m.number === n)?.builds_on || []).forEach(add);
    };
    if (route2) {
      add(route2);
      onRoute.add(1);
    }
    cards.forEach((c, i) => {
      if (route2 && !onRoute.has(d.modules[i].number)) c.classList.add("off-route");
    });
    const routeSelect = el(
      "select",
      { id: "route", onchange: (e) => {
        localStorage.setItem("lab-route", e.target.value);
        dashboard();
      } },
      el("option", { value: "0", text: t("fullCourse") }),
      d.modules.map((m) => el("option", { value: String(m.number), selected: m.number === route2, text: `\u2192 ${m.number}. ${m.title}` }))
    );
    const list = (items, render) => items.length ? el("ul", {}, items.map((i) => el("li", {}, render(i)))) : el("p", { class: "muted", text: t("none") });
    const chart = el("div", { class: "chart", id: "chart-progress", role: "img", "aria-label": t("attemptsChart") });
    if (!draw(
      el("h1", { text: t("progress") }),
      el(
        "div",
        { class: "bar", role: "progressbar", "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100 },
        el("span", { style: `width:${pct}%` })
      ),
      el("p", { id: "progress-text", text: t("modulesDone", d.done, d.total, pct) }),
      el("h2", { text: t("roadmap") }),
      el("label", { for: "route", text: `${t("route")}: ` }),
      routeSelect,
      el("div", { class: "cards" }, cards),
      el(
        "div",
        { class: "row" },
        el("section", {}, el("h2", { text: t("recent") }), list(d.recent, (r) => el("a", {
          href: `#/module/${r.module}`,
          class: `status-${r.status}`,
          text: `${r.module}: ${r.status} ${r.passed}/${r.total} \xB7 ${when(r.at)}`
        }))),
        el(
          "section",
          {},
          el("h2", { text: t("due") }),
          list(d.modules.filter((m) => m.due), (m) => el("a", { href: `#/module/${m.number}`, text: `${m.number}. ${m.title}` })),
          el("h2", { text: t("badges") }),
          list(d.badges, (b) => el("span", { text: `\u{1F3C5} ${b.text}` }))
        ),
        el(
          "section",
          {},
          el("h2", { text: t("week") }),
          el("p", { id: "week", text: `${d.week_minutes} ${t("minutes")} \xB7 ${t("streak")}: ${d.streak} ${t("days")}` }),
          el("h2", { text: t("notes") }),
          el("a", { href: "#/log", text: t("exportLog") })
        )
      ),
      el("h2", { text: t("charts") }),
      chart
    )) return;
    drawProgressChart(chart, d);
  }
  function drawProgressChart(node, d) {
    if (!window.echarts) return;
    const rows = [...d.recent].reverse();
    const c = echarts.init(node);
    c.setOption({
      tooltip: { trigger: "axis" },
      xAxis: { type: "category", data: rows.map((r) => when(r.at)) },
      yAxis: { type: "value", name: t("attemptsChart") },
      series: [{ type: "line", data: rows.map((r) => r.passed), name: t("attemptsChart") }]
    });
    c.on("click", (p) => {
      location.hash = `#/module/${rows[p.dataIndex].module}`;
    });
  }
  async function modulePage(n) {
    const draw = view();
    let m;
    try {
      m = await api("GET", `modules/${n}`);
    } catch (e) {
      draw(notice(e.message, "bad"), el("a", { href: "#/", text: t("roadmap") }));
      return;
    }
    current = m;
    const left = el("div", { class: "left", id: "left" });
    const panel = el("div", { id: "panel", role: "tabpanel" });
    const tabs = [
      ["task", () => taskTab(m)],
      ["intro", () => introTab(m)],
      ["hints", () => hintsTab(m)],
      ["reflection", () => reflectionTab(m)],
      ["history", () => historyTab(m)],
      ["charts", () => chartsTab(m)],
      ["discussion", () => discussionTab(m)]
    ];
    const bar = el("div", { class: "tabs", role: "tablist" }, tabs.map(([k, render]) => el("button", {
      type: "button",
      role: "tab",
      id: `tab-${k}`,
      "aria-selected": "false",
      text: t(k),
      onclick: (e) => {
        for (const b of bar.children) b.setAttribute("aria-selected", b === e.currentTarget);
        panel.replaceChildren(...render());
      }
    })));
    left.append(
      el("h1", { id: "module-title", text: `${m.number}. ${m.title}` }),
      el("p", { class: "muted", id: "module-state", text: stateWord(m.state) }),
      bar,
      panel
    );
    const fileTabs = el("div", { class: "tabs", role: "tablist", "aria-label": t("files") }, m.files.map((f, i) => el("button", {
      type: "button",
      role: "tab",
      "aria-selected": i === 0 ? "true" : "false",
      text: f.name,
      onclick: (e) => {
        for (const b of fileTabs.children) b.setAttribute("aria-selected", b === e.currentTarget);
        editor.setModel(models[f.name]);
      }
    })));
    const saveState = el("span", { class: "muted", id: "save-state", "aria-live": "polite" });
    const tools = el(
      "div",
      { class: "toolbar" },
      el("button", { type: "button", class: "primary", id: "run", text: t("run"), onclick: runTests }),
      el("button", { type: "button", id: "save", text: t("save"), onclick: saveAll }),
      el("button", { type: "button", id: "format", text: t("format"), onclick: () => editor.getAction("editor.action.formatDocument").run() }),
      el("button", { type: "button", id: "diff", text: t("diff"), onclick: () => showDiff(false) }),
      el("button", { type: "button", id: "request-review", text: t("review"), onclick: requestReview }),
      saveState
    );
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
    const task = el("div", { id: "task-text" });
    task.innerHTML = m.task_html;
    out.push(task);
    if (m.library.length) out.push(el("h2", { text: t("library") }), el("ul", {}, m.library.map((p) => el("li", {}, el("code", { text: p })))));
    if (!m.state.passed && !m.state.skipped) out.push(el("button", { type: "button", id: "skip", text: t("skip"), onclick: async () => {
      await api("POST", `modules/${m.number}/skip`);
      location.hash = "#/";
    } }));
    return out;
  }
  function introTab(m) {
    const d = el("div", { id: "intro-text" });
    d.innerHTML = m.intro_html;
    return [d];
  }
  function hintsTab(m) {
    const more = el("p", { class: "muted" }, `${t("library")}: `, el("a", { href: "#/references", text: t("references") }));
    return [...m.tasks.map((task) => {
      const box = el("div", { class: "task-hints", id: `hints-${task.id}` });
      const list = el("div", {}, task.opened.map((h, i) => el("div", { class: "hint", text: `${i + 1}/${task.levels} ${h}` })));
      const btn = el("button", {
        type: "button",
        class: "open-hint",
        disabled: task.opened.length >= task.levels,
        text: task.opened.length >= task.levels ? t("allHints") : t("nextHint"),
        onclick: async () => {
          try {
            const h = await api("POST", `modules/${m.number}/hints`, { task: task.id });
            task.opened.push(h.text);
            list.append(el("div", { class: "hint", text: `${h.level}/${h.levels} ${h.text}` }));
            if (h.level >= h.levels) {
              btn.disabled = true;
              btn.textContent = t("allHints");
            }
          } catch (e) {
            list.append(notice(e.message, "bad"));
          }
        }
      });
      box.append(el("h2", { text: task.title }), list, btn);
      return box;
    }), more];
  }
  function reflectionTab(m) {
    if (m.reflection.length && m.reflection[0].answer) return [reflectionAnswers(m.reflection), ...nextStep(m)];
    const fields = m.reflection.map((q, i) => [
      el("label", { for: `answer-${i}`, text: `${i + 1}. ${q.question}` }),
      el("textarea", { id: `answer-${i}`, required: true })
    ]);
    const msg = el("div", { role: "alert" });
    const form = el("form", { id: "reflection-form", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const r = await api("POST", `modules/${m.number}/reflection`, { answers: m.reflection.map((_, i) => document.getElementById(`answer-${i}`).value) });
        m.state = r.state;
        m.reflection = r.answers.map((a) => ({ question: a.question, answer: a.answer, mine: a.mine }));
        m.unlockedNow = r.unlocked;
        form.replaceWith(reflectionAnswers(m.reflection), ...nextStep(m));
        document.getElementById("module-state").textContent = stateWord(m.state);
      } catch (err) {
        msg.replaceChildren(notice(err.message, "bad"));
      }
    } }, fields, el("button", { type: "submit", class: "primary", id: "submit-reflection", text: t("submit") }), msg);
    return [form];
  }
  function reflectionAnswers(items) {
    return el("div", { id: "model-answers" }, items.map((q, i) => el(
      "div",
      {},
      el("h2", { text: `${i + 1}. ${q.question}` }),
      el("p", {}, el("strong", { text: `${t("you")}: ` }), q.mine),
      el("p", {}, el("strong", { text: `${t("modelAnswer")}: ` }), q.answer)
    )));
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
    return [el("ol", { id: "attempts" }, m.attempts.map((a) => el("li", {}, el("button", {
      type: "button",
      class: `status-${a.status}`,
      text: `${when(a.at)} \xB7 ${a.status} ${a.passed}/${a.total}`,
      onclick: async () => {
        const r = await api("GET", `modules/${m.number}/attempts/${a.index}`);
        renderResults(r, t("reopened", a.index));
      }
    }))))];
  }
  function chartsTab(m) {
    const box = el("div", { id: "charts" });
    const log = el("pre", { id: "chart-log", "aria-live": "polite" });
    (async () => {
      const c = await api("GET", `modules/${m.number}/charts`);
      if (c.attempt === null) {
        box.replaceChildren(el("p", { class: "muted", text: t("noCharts") }));
        return;
      }
      box.replaceChildren(el("p", { class: "muted", text: t("attempt", c.attempt, "") }));
      const chart = (id, label, option, onClick, setup) => {
        const node = el("div", { class: "chart", id, role: "img", "aria-label": label });
        box.append(el("h2", { text: label }), node);
        const ch = echarts.init(node);
        ch.setOption({ tooltip: {}, ...option });
        if (onClick) ch.on("click", onClick);
        if (setup) setup(ch);
      };
      Object.entries(c.line).forEach(([name, pts], i) => chart(
        `chart-line-${i}`,
        name,
        {
          tooltip: { trigger: "axis" },
          xAxis: { type: "value", name: "step" },
          yAxis: { type: "value", name },
          series: [{ type: "line", name, data: pts.map((p) => [p.step, p.value]), symbolSize: 8 }]
        },
        null,
        (ch) => ch.getZr().on("click", (e) => {
          const [x] = ch.convertFromPixel({ seriesIndex: 0 }, [e.offsetX, e.offsetY]);
          const p = pts.reduce((a, b) => Math.abs(b.step - x) < Math.abs(a.step - x) ? b : a);
          log.textContent = `${name} @ ${p.step} = ${p.value}  (${p.test})
` + p.log.join("\n");
        })
      ));
      Object.entries(c.radar).forEach(([name, axes], i) => chart(
        `chart-radar-${i}`,
        name,
        {
          radar: { indicator: axes.map((a) => ({ name: a.axis, max: Math.max(1, ...axes.map((x) => x.value)) })) },
          series: [{ type: "radar", data: [{ value: axes.map((a) => a.value), name }] }]
        }
      ));
      Object.entries(c.heatmap).forEach(([name, g], i) => chart(
        `chart-heatmap-${i}`,
        name,
        {
          xAxis: { type: "category", data: g.x },
          yAxis: { type: "category", data: g.y },
          visualMap: { min: Math.min(...g.cells.map((x) => x[2])), max: Math.max(...g.cells.map((x) => x[2])), calculable: true, orient: "horizontal", left: "center", bottom: 0 },
          grid: { bottom: 70 },
          series: [{ type: "heatmap", data: g.cells, label: { show: true } }]
        }
      ));
      if (c.compare.length) chart(
        "chart-compare",
        t("learnerVsRef"),
        {
          legend: {},
          xAxis: { type: "category", data: c.compare.map((x) => x.name) },
          yAxis: { type: "value" },
          series: [
            { type: "line", name: t("you"), data: c.compare.map((x) => x.mine) },
            { type: "line", name: "reference", data: c.compare.map((x) => x.reference) }
          ]
        }
      );
      box.append(log);
    })().catch((e) => box.replaceChildren(notice(e.message, "bad")));
    return [box];
  }
  function discussionTab(m) {
    const box = el("div", { id: "discussion" });
    const load = async () => {
      const d = await api("GET", `modules/${m.number}/posts`);
      box.replaceChildren(...d.threads.map((th) => el(
        "article",
        { class: "test" },
        el("strong", { text: th.title }),
        el("span", { class: "muted", text: ` \u2014 ${th.user}, ${when(th.at)}` }),
        el("p", { text: th.text }),
        th.replies.map((r) => el("p", { class: "muted", text: `\u21B3 ${r.user}: ${r.text}` })),
        replyForm(th.id)
      )), newThread());
    };
    const replyForm = (id) => {
      const ta = el("input", { "aria-label": t("reply") });
      return el(
        "form",
        { onsubmit: async (e) => {
          e.preventDefault();
          await api("POST", `modules/${m.number}/posts`, { parent: id, text: ta.value });
          load();
        } },
        ta,
        el("button", { type: "submit", text: t("reply") })
      );
    };
    const newThread = () => {
      const title = el("input", { id: "thread-title", "aria-label": t("title"), placeholder: t("title") });
      const text = el("textarea", { id: "thread-text", "aria-label": t("newThread") });
      return el(
        "form",
        { onsubmit: async (e) => {
          e.preventDefault();
          await api("POST", `modules/${m.number}/posts`, { title: title.value, text: text.value });
          load();
        } },
        el("h2", { text: t("newThread") }),
        title,
        text,
        el("button", { type: "submit", text: t("send") })
      );
    };
    load();
    const note = el("textarea", { id: "note-text", "aria-label": t("addNote") });
    const file = el("input", { type: "file", accept: ".md,.txt", "aria-label": t("upload"), onchange: async (e) => {
      note.value = await e.target.files[0].text();
    } });
    const notes = el(
      "form",
      { onsubmit: async (e) => {
        e.preventDefault();
        await api("POST", `modules/${m.number}/notes`, { text: note.value });
        note.value = "";
        notes.append(notice(t("saved"), "ok"));
      } },
      el("h2", { text: t("notes") }),
      note,
      file,
      el("button", { type: "submit", text: t("addNote") })
    );
    return [box, notes];
  }
  function setupEditor(node, m) {
    for (const mdl of Object.values(models)) mdl.dispose();
    models = {};
    if (editor) editor.dispose();
    for (const f of m.files) models[f.name] = monaco.editor.createModel(f.content, "python", monaco.Uri.parse(`file:///${m.number}/${f.name}`));
    editor = monaco.editor.create(node, {
      model: models[m.files[0].name],
      automaticLayout: true,
      minimap: { enabled: false },
      fontSize: 14,
      scrollBeyondLastLine: false,
      tabSize: 4,
      insertSpaces: true
    });
    editor.addCommand(monaco.KeyMod.CtrlCmd | monaco.KeyCode.KeyS, saveAll);
    let timer = null;
    for (const [name, mdl] of Object.entries(models)) {
      mdl.onDidChangeContent(() => {
        document.getElementById("save-state").textContent = "\u2026";
        clearTimeout(timer);
        timer = setTimeout(() => {
          saveAll();
          lint(name, mdl);
        }, 800);
      });
      lint(name, mdl);
    }
  }
  async function saveAll() {
    for (const [name, mdl] of Object.entries(models)) {
      await api("PUT", `modules/${current.number}/files/${encodeURIComponent(name)}`, { content: mdl.getValue() });
    }
    const s = document.getElementById("save-state");
    if (s) s.textContent = t("saved");
  }
  async function lint(name, mdl) {
    try {
      const r = await api("POST", "editor/lint", { source: mdl.getValue(), name });
      monaco.editor.setModelMarkers(mdl, "ruff", r.findings.map((f) => ({
        startLineNumber: f.line,
        startColumn: f.column,
        endLineNumber: f.end_line,
        endColumn: f.end_column,
        message: `${f.code} ${f.message}`,
        severity: monaco.MarkerSeverity.Warning
      })));
    } catch (e) {
    }
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
      } catch (e) {
        return { suggestions: [] };
      }
    } });
    monaco.languages.registerDocumentFormattingEditProvider("python", { provideDocumentFormattingEdits: async (model) => {
      const r = await api("POST", "editor/format", { source: model.getValue() });
      return [{ range: model.getFullModelRange(), text: r.source }];
    } });
  }
  async function runTests() {
    const area = document.getElementById("testarea");
    const btn = document.getElementById("run");
    btn.disabled = true;
    const state = el("p", { id: "run-state", text: "\u2026" });
    const live = el("pre", { id: "live" });
    area.replaceChildren(state, live);
    try {
      await saveAll();
      const job = await api("POST", `modules/${current.number}/runs`);
      await new Promise((resolve) => {
        const src = new EventSource(`api/runs/${job.id}/events?lang=${lang}`);
        src.addEventListener("queue", (e) => {
          const q = JSON.parse(e.data);
          state.textContent = q.position ? t("queued", q.position, q.workers) : t("running");
        });
        src.addEventListener("start", () => {
          state.textContent = t("running");
        });
        src.addEventListener("output", (e) => {
          live.textContent += JSON.parse(e.data).text;
          if (live.textContent.length > 7e4) live.textContent = live.textContent.slice(-6e4);
          live.scrollTop = live.scrollHeight;
        });
        src.addEventListener("result", (e) => {
          src.close();
          renderResults(JSON.parse(e.data));
          resolve();
        });
        src.addEventListener("failed", (e) => {
          src.close();
          area.append(notice(JSON.parse(e.data).error, "bad"));
          resolve();
        });
        src.onerror = () => {
          if (src.readyState === EventSource.CLOSED) resolve();
        };
      });
    } catch (e) {
      area.append(notice(e.message, "bad"));
    } finally {
      btn.disabled = false;
    }
  }
  function lineLinks(text) {
    const out = [];
    const re = /(your ([\w./-]+\.py), line (\d+)|你的 ([\w./-]+\.py) 第 (\d+) 行)/g;
    let last = 0, m;
    while (m = re.exec(text)) {
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
    editor.revealLineInCenter(line);
    editor.setPosition({ lineNumber: line, column: 1 });
    editor.focus();
    editor.createDecorationsCollection([{ range: new monaco.Range(line, 1, line, 1), options: { isWholeLine: true, className: "hint" } }]);
  }
  function renderResults(r, heading) {
    const area = document.getElementById("testarea");
    const keep = heading ? [] : [...area.querySelectorAll("#run-state, #live")];
    const tests = r.tests || [];
    const passed = tests.filter((x) => x.status === "pass").length;
    const head = el("h2", {
      id: "result-status",
      class: `status-${r.status}`,
      "data-status": r.status,
      text: `${heading ? heading + " \u2014 " : ""}${r.status} \xB7 ${passed}/${tests.length} \xB7 ${(r.duration_s ?? 0).toFixed(1)} s`
    });
    const items = [];
    const seen = /* @__PURE__ */ new Set();
    for (const x of tests) {
      const item = el(
        "div",
        { class: `test test-${x.status}` },
        el("span", { class: `status-${x.status}`, text: { pass: "\u2713 ", fail: "\u2717 ", error: "! " }[x.status] }),
        el("span", { class: "name", text: x.name }),
        x.hidden ? el("span", { class: "muted", text: " (hidden)" }) : null
      );
      if (x.status !== "pass") {
        if (seen.has(x.message)) item.append(el("span", { class: "muted", text: " (as above)" }));
        else {
          seen.add(x.message);
          item.append(el("pre", { class: "message" }, lineLinks(x.message)));
          const m = /expected ([\s\S]*?), got ([\s\S]*?)(?:\. |\n|$)/.exec(x.message);
          if (m) item.append(el(
            "table",
            { class: "eva" },
            el("tr", {}, el("th", { text: t("expected") }), el("td", { class: "expected", text: m[1] })),
            el("tr", {}, el("th", { text: t("actual") }), el("td", { class: "actual", text: m[2] }))
          ));
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
      if (r.status === "pass") extra.push(notice(t("passedMsg"), "ok"), ...r.unlocked ? [notice(t("unlockedNext", current.number + 1), "ok")] : []);
      else extra.push(el("p", { text: t("stuck") }));
    }
    area.replaceChildren(...keep, head, ...extra, ...items);
    if (!heading) refreshState();
  }
  async function refreshState() {
    const m = await api("GET", `modules/${current.number}`);
    current.state = m.state;
    current.attempts = m.attempts;
    document.getElementById("module-state").textContent = stateWord(m.state);
  }
  async function showDiff(confirm) {
    const area = document.getElementById("testarea");
    let d;
    try {
      await saveAll();
      d = await api("POST", `modules/${current.number}/diff`, { confirm });
    } catch (e) {
      if (e.status === 409 && e.data.confirm) {
        area.replaceChildren(el(
          "div",
          { id: "diff-confirm", class: "notice" },
          el("p", { text: e.message }),
          el("button", { type: "button", id: "diff-yes", text: t("confirmShow"), onclick: () => showDiff(true) }),
          " ",
          el("button", { type: "button", text: t("cancel"), onclick: () => area.replaceChildren() })
        ));
        document.getElementById("diff-yes").focus();
      } else area.replaceChildren(notice(e.message, "bad"));
      return;
    }
    const row = (r) => r.kind === "fold" ? el("div", { class: "fold", text: t("unchanged", r.count) }) : el("div", { class: r.kind, text: `${r.kind === "add" ? "+" : r.kind === "del" ? "-" : " "} ${r.text}` });
    const blocks = d.files.map((f) => {
      const hunks = [];
      f.rows.forEach((r, i) => {
        if (r.kind === "add" || r.kind === "del") {
          const last = hunks[hunks.length - 1];
          if (last && last.end === i) {
            last.end = i + 1;
          } else hunks.push({ start: i, end: i + 1, section: r.section });
        }
      });
      const view2 = el("div", { class: "diff", id: `diff-${f.file}` }, f.rows.map(row));
      const where = el("span", { class: "muted", "aria-live": "polite" });
      let step = -1;
      const go = (k) => {
        step = Math.max(0, Math.min(hunks.length - 1, k));
        const h = hunks[step];
        view2.replaceChildren(...f.rows.slice(Math.max(0, h.start - 3), h.end + 3).map(row));
        where.textContent = `${t("change")} ${step + 1}/${hunks.length}` + (h.section ? ` \xB7 ${t("section")} ${h.section}` : "");
      };
      const steps = hunks.length ? el(
        "div",
        { class: "toolbar" },
        el("button", { type: "button", class: "diff-step", text: t("stepByStep"), onclick: () => go(step + 1) }),
        el("button", { type: "button", text: "\u2190", "aria-label": t("previous"), onclick: () => go(step - 1) }),
        el("button", { type: "button", text: t("wholeDiff"), onclick: () => {
          step = -1;
          view2.replaceChildren(...f.rows.map(row));
          where.textContent = "";
        } }),
        where
      ) : null;
      return el(
        "section",
        { class: "diff-file" },
        el("h2", { text: f.file }),
        f.same ? el("p", { text: t("same") }) : [steps, view2],
        el("button", { type: "button", class: "apply-reference", text: t("applyRef"), onclick: () => {
          models[f.file].setValue(f.reference);
        } })
      );
    });
    const sim = el("div", { id: "similarity" });
    area.replaceChildren(el("h2", { text: t("diff") }), ...blocks, sim);
    try {
      const s = await api("GET", `modules/${current.number}/similarity`);
      sim.append(
        el("p", { class: "muted", text: `${t("similarity")}: ` + s.files.map((f) => `${f.file} tokens ${f.tokens}, AST ${f.ast}`).join("; ") }),
        el("p", { class: "muted", text: s.flagged ? t("flagged") : t("notFlagged") })
      );
    } catch (e) {
    }
  }
  async function requestReview() {
    const area = document.getElementById("testarea");
    try {
      await saveAll();
      await api("POST", `modules/${current.number}/review`, { message: "" });
      area.prepend(notice(t("reviewSent"), "ok"));
    } catch (e) {
      area.prepend(notice(e.message, "bad"));
    }
  }
  async function referencesPage() {
    const draw = view();
    const d = await api("GET", "dashboard");
    draw(
      el("h1", { text: t("references") }),
      el("p", { class: "muted", text: t("referencesIntro") }),
      el("ul", { id: "references" }, d.modules.map((m) => el(
        "li",
        {},
        el("strong", { text: `${m.number}. ${m.title}` }),
        el("ul", {}, m.library.map((p) => el("li", {}, el("code", { text: `src/llm_foundry/${p}` }))))
      )))
    );
  }
  async function reviewsPage() {
    const draw = view();
    const d = await api("GET", "reviews");
    draw(el("h1", { text: t("reviews") }), d.reviews.length ? el("div", { id: "reviews" }, d.reviews.map((r) => {
      const text = el("textarea", { "aria-label": t("comment") });
      return el(
        "article",
        { class: "test review", "data-user": r.user },
        el("h2", { text: `${r.user} \xB7 ${r.module} \xB7 ${when(r.at)} \xB7 ${r.status ?? ""}` }),
        r.message ? el("p", { text: r.message }) : null,
        Object.entries(r.files).map(([name, code]) => el("details", {}, el("summary", { text: name }), el("pre", { text: code }))),
        r.comments.map((c) => el("p", { class: "comment", text: `${c.user}: ${c.text}` })),
        el(
          "form",
          { onsubmit: async (e) => {
            e.preventDefault();
            await api("POST", `reviews/${r.id}/comments`, { text: text.value });
            reviewsPage();
          } },
          text,
          el("button", { type: "submit", text: t("comment") })
        )
      );
    })) : el("p", { class: "muted", text: t("none") }));
  }
  async function searchPage(q) {
    const draw = view();
    const d = await api("GET", `search?q=${encodeURIComponent(q)}`);
    draw(el("h1", { text: `${t("search")}: ${q}` }), d.results.length ? el("ul", { id: "search-results" }, d.results.map((r) => el("li", {}, el("a", { href: `#/module/${r.module}`, text: `${r.module}. ${r.title}` }), el("span", { class: "muted", text: ` (${r.kind}) ${r.text}` })))) : el("p", { text: t("noResults") }));
  }
  async function logPage() {
    const draw = view();
    const text = await api("GET", "log");
    const blob = new Blob([text], { type: "text/markdown" });
    draw(
      el("h1", { text: t("exportLog") }),
      el("a", { href: URL.createObjectURL(blob), download: "learning-log.md", id: "log-download", text: "learning-log.md" }),
      el("pre", { id: "log", text })
    );
  }
  async function route() {
    const hash = location.hash || "#/";
    if (me.mode === "classroom" && !me.user) return loginPage();
    try {
      let m;
      if (m = /^#\/module\/(\d+)/.exec(hash)) await modulePage(+m[1]);
      else if (hash.startsWith("#/reviews")) await reviewsPage();
      else if (hash.startsWith("#/references")) await referencesPage();
      else if (m = /^#\/search\/(.*)/.exec(hash)) await searchPage(decodeURIComponent(m[1]));
      else if (hash.startsWith("#/log")) await logPage();
      else await dashboard();
    } catch (e) {
      if (e.status === 401) {
        me = await api("GET", "me");
        return loginPage();
      }
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
})();
