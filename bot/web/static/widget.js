/*
 * Perimeter — the CRM sidebar widget (the iframe beside a customer's card in Bitrix24 or amoCRM/Kommo).
 *
 * No framework and no build step: the page's Content-Security-Policy is `default-src 'self'` with
 * no inline script or style and no eval, so everything lives in this file and widget.css.
 *
 * Everything the server sends — the customer's CRM data, the conversation, the model's answers —
 * is untrusted text. It reaches the page only through textContent / text nodes (see `h`); no
 * innerHTML anywhere. Links come only from http(s) URLs (see `safeUrl`).
 *
 * The session token is in <meta name="perimeter-session">; every API call sends it as
 * `Authorization: Bearer`. There are no cookies, so there is nothing for CSRF to ride on.
 */
"use strict";

(() => {
  const QUEUE_REFRESH_MS = 20000;

  const meta = (name) => {
    const node = document.querySelector(`meta[name="${name}"]`);
    return node ? node.getAttribute("content") || "" : "";
  };
  const TOKEN = meta("perimeter-session");
  const LANG = meta("perimeter-language") === "en" ? "en" : "ru";
  const LOCALE = LANG === "en" ? "en-GB" : "ru-RU";

  // --- texts ----------------------------------------------------------------------------------------

  const TEXTS = {
    ru: {
      brand: "Perimeter",
      operatorPrefix: "Оператор",
      customerHeading: "Клиент",
      ticketHeading: "Обращение и переписка",
      suggestionHeading: "Подсказка ответа",
      askHeading: "Спросить базу знаний",
      queueHeading: "Очередь обращений",
      statsHeading: "Статистика за 7 дней",
      statsShow: "Показать показатели сервиса",
      statsQuestions: "Вопросов",
      statsClosed: "Без оператора",
      statsP95: "Время ответа, p95",
      statsThumbs: "Ответ помог",
      statsCache: "Из кэша",
      statsSaving: "Экономия к облаку",
      statsEscalations: "Чаще всего к оператору",
      statsHint: "Полный отчёт с графиками: perimeter report --since 7d --html report.html",
      loading: "Загрузка…",
      loadingCustomer: "Загружаю данные клиента…",
      loadingSuggestion: "Готовлю подсказку по последнему вопросу клиента…",
      loadingQueue: "Загружаю очередь…",
      retry: "Повторить",
      refresh: "Обновить",
      refreshQueue: "Обновить очередь",
      refreshSuggestion: "Обновить подсказку",
      sessionExpired: "Сессия истекла — откройте карточку клиента заново",
      sessionExpiredHint:
        "Из соображений безопасности сессия виджета действует ограниченное время. " +
        "Закройте карточку клиента в CRM и откройте её снова.",
      errNetwork: "Нет связи с сервером Perimeter. Проверьте подключение и нажмите «Повторить».",
      errServer: "Сервер Perimeter ответил ошибкой ({status}). Повторите через минуту; если не помогает — сообщите администратору.",
      errRequest: "Запрос не принят ({status}). Проверьте введённый текст и попробуйте ещё раз.",
      errBadAnswer: "Сервер прислал непонятный ответ. Обновите виджет; если повторится — сообщите администратору.",
      crmUnavailable: "Данные из CRM сейчас недоступны.",
      crmUnavailableHint: "Переписка, подсказки и база знаний работают. Данные клиента появятся, когда CRM ответит.",
      noCustomer: "Виджет открыт не из карточки клиента: доступны база знаний и очередь обращений.",
      contacts: "Контакты",
      details: "Сведения",
      products: "Продукты и сделки",
      noProducts: "Активных продуктов нет.",
      closedProducts: "Закрытых: {n}",
      productDetails: "Подробнее",
      tasks: "Открытые задачи",
      noTasks: "Открытых задач нет.",
      deadline: "до {date}",
      ticket: "Обращение #{id}",
      noTicket: "Открытого обращения нет.",
      reason: "Причина",
      waiting: "Ждёт",
      operator: "Оператор",
      nobody: "не назначен",
      summary: "Кратко",
      draft: "Черновик ответа из базы знаний",
      useDraft: "Вставить черновик в ответ",
      claim: "Взять",
      claimTicket: "Взять обращение #{id}",
      resolve: "Решено",
      resolveTicket: "Закрыть обращение #{id} как решённое",
      replyLabel: "Ответ клиенту",
      replyHint: "Клиент получит ответ в Telegram с пометкой, что пишет оператор. Ctrl+Enter — отправить.",
      send: "Отправить",
      sending: "Отправляю…",
      replyEmpty: "Напишите текст ответа.",
      claimed: "Обращение #{id} теперь за вами.",
      claimLost: "Обращение #{id} уже взял(а) {name}.",
      ticketGone: "Обращение #{id} больше недоступно — обновите очередь.",
      replySent: "Ответ отправлен клиенту.",
      resolved: "Обращение #{id} решено. Следующее сообщение клиента снова получит бот.",
      refused: "Действие не выполнено.",
      conversation: "Переписка с ботом",
      noConversation: "Клиент ещё не писал боту.",
      role_customer: "Клиент",
      role_assistant: "Бот",
      role_operator: "Оператор",
      noSuggestion: "Подсказки нет: клиент ещё ничего не спросил у бота.",
      customerAsked: "Вопрос клиента",
      noConfidentAnswer: "В базе знаний нет уверенного ответа на этот вопрос — ответьте клиенту сами.",
      nearDocuments: "Близкие документы",
      sources: "Источники",
      extractive: "Дословная цитата из документа: модель сейчас не отвечает.",
      copy: "Копировать",
      copied: "Текст скопирован.",
      copySelected: "Текст выделен — нажмите Ctrl+C (⌘C), чтобы скопировать.",
      insert: "Вставить в CRM",
      inserting: "Вставляю…",
      inserted: "Добавлено в карточку клиента как комментарий.",
      insertFailed: "Не удалось вставить в CRM ({error}). Скопируйте текст и вставьте вручную.",
      askLabel: "Вопрос к базе знаний",
      askPlaceholder: "Например: лимит по карте",
      ask: "Спросить",
      asking: "Ищу ответ в базе знаний…",
      askEmpty: "Напишите вопрос.",
      queueEmpty: "Очередь пуста — все обращения разобраны.",
      thisCustomer: "этот клиент",
      takenBy: "Ведёт: {name}",
      updatedAt: "Обновлено в {time} · автообновление каждые 20 с",
      staleQueue: "Не удалось обновить ({error}). Повторю через 20 с.",
    },
    en: {
      brand: "Perimeter",
      operatorPrefix: "Operator",
      customerHeading: "Customer",
      ticketHeading: "Ticket and conversation",
      suggestionHeading: "Suggested reply",
      askHeading: "Ask the knowledge base",
      queueHeading: "Ticket queue",
      statsHeading: "Last 7 days",
      statsShow: "Show the service's figures",
      statsQuestions: "Questions",
      statsClosed: "Without an operator",
      statsP95: "Answer time, p95",
      statsThumbs: "Helpful",
      statsCache: "From cache",
      statsSaving: "Saving vs cloud",
      statsEscalations: "Most often escalated",
      statsHint: "The full report with charts: perimeter report --since 7d --html report.html",
      loading: "Loading…",
      loadingCustomer: "Loading the customer…",
      loadingSuggestion: "Preparing a suggestion for the customer's last question…",
      loadingQueue: "Loading the queue…",
      retry: "Retry",
      refresh: "Refresh",
      refreshQueue: "Refresh the queue",
      refreshSuggestion: "Refresh the suggestion",
      sessionExpired: "Session expired — open the customer's card again",
      sessionExpiredHint:
        "For security the widget's session lasts a limited time. Close the customer's card in the CRM and open it again.",
      errNetwork: "Cannot reach the Perimeter server. Check the connection and press “Retry”.",
      errServer: "The Perimeter server answered with an error ({status}). Try again in a minute; if it persists, tell your administrator.",
      errRequest: "The request was not accepted ({status}). Check the text and try again.",
      errBadAnswer: "The server sent an unreadable answer. Reload the widget; if it happens again, tell your administrator.",
      crmUnavailable: "CRM data is unavailable right now.",
      crmUnavailableHint: "The conversation, suggestions and the knowledge base still work. Customer data will return when the CRM answers.",
      noCustomer: "The widget was not opened from a customer's card: the knowledge base and the queue are available.",
      contacts: "Contacts",
      details: "Details",
      products: "Products and deals",
      noProducts: "No active products.",
      closedProducts: "Closed: {n}",
      productDetails: "Details",
      tasks: "Open tasks",
      noTasks: "No open tasks.",
      deadline: "due {date}",
      ticket: "Ticket #{id}",
      noTicket: "No open ticket.",
      reason: "Reason",
      waiting: "Waiting",
      operator: "Operator",
      nobody: "unassigned",
      summary: "Summary",
      draft: "Draft reply from the knowledge base",
      useDraft: "Put the draft into the reply",
      claim: "Claim",
      claimTicket: "Claim ticket #{id}",
      resolve: "Resolve",
      resolveTicket: "Close ticket #{id} as resolved",
      replyLabel: "Reply to the customer",
      replyHint: "The customer gets it in Telegram, marked as written by an operator. Ctrl+Enter sends.",
      send: "Send",
      sending: "Sending…",
      replyEmpty: "Type the reply first.",
      claimed: "Ticket #{id} is yours now.",
      claimLost: "Ticket #{id} is already taken by {name}.",
      ticketGone: "Ticket #{id} is no longer available — refresh the queue.",
      replySent: "The reply was sent to the customer.",
      resolved: "Ticket #{id} is resolved. The bot answers the customer's next message again.",
      refused: "The action was not performed.",
      conversation: "Conversation with the bot",
      noConversation: "The customer has not written to the bot yet.",
      role_customer: "Customer",
      role_assistant: "Bot",
      role_operator: "Operator",
      noSuggestion: "No suggestion: the customer has not asked the bot anything yet.",
      customerAsked: "The customer asked",
      noConfidentAnswer: "The knowledge base has no confident answer to this question — answer the customer yourself.",
      nearDocuments: "Related documents",
      sources: "Sources",
      extractive: "A verbatim quote from a document: the model is not answering right now.",
      copy: "Copy",
      copied: "Copied.",
      copySelected: "The text is selected — press Ctrl+C (⌘C) to copy it.",
      insert: "Insert into CRM",
      inserting: "Inserting…",
      inserted: "Added to the customer's card as a comment.",
      insertFailed: "Could not insert into the CRM ({error}). Copy the text and paste it by hand.",
      askLabel: "Question for the knowledge base",
      askPlaceholder: "E.g. card limits",
      ask: "Ask",
      asking: "Searching the knowledge base…",
      askEmpty: "Type a question.",
      queueEmpty: "The queue is empty — every ticket is handled.",
      thisCustomer: "this customer",
      takenBy: "Handled by {name}",
      updatedAt: "Updated at {time} · refreshes every 20 s",
      staleQueue: "Could not refresh ({error}). Will retry in 20 s.",
    },
  };
  const T = TEXTS[LANG];

  /** A text with {placeholders} filled in (values stay plain text: they go through textContent). */
  const tr = (key, vars = {}) =>
    (T[key] || key).replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));

  // --- DOM helpers ----------------------------------------------------------------------------------

  /**
   * Create an element. Children that are not Nodes become text nodes, so data can never turn into
   * markup. `props`: "class", "text" (textContent), "on<event>" handlers, other keys as attributes —
   * callers pass data-derived attribute values only for plain attributes, never for href (see safeUrl).
   */
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // What each container last showed (as JSON), so a refresh with the same data leaves it alone.
  const shown = new WeakMap();

  const clear = (node) => {
    shown.delete(node);
    node.replaceChildren();
  };

  /**
   * Render `body` from `data` unless it already shows exactly that. A refresh every 20 s must not
   * fold the <details> the operator unfolded, move their focus or scroll: unchanged data is not
   * re-rendered, and open <details data-key> stay open when it is.
   */
  function update(body, data, render) {
    const key = JSON.stringify(data);
    if (shown.get(body) === key) return;
    const open = new Set(Array.from(body.querySelectorAll("details[open][data-key]"), (d) => d.dataset.key));
    render();
    shown.set(body, key);
    for (const details of body.querySelectorAll("details[data-key]")) {
      if (open.has(details.dataset.key)) details.open = true;
    }
  }

  /** Only absolute http(s) URLs become links: no javascript:, data: or relative tricks. */
  function safeUrl(value) {
    if (typeof value !== "string" || !value) return null;
    try {
      const url = new URL(value);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch {
      return null;
    }
  }

  let idCounter = 0;
  const uid = (prefix) => `${prefix}-${++idCounter}`;

  function spinner() {
    return h("span", { class: "spinner", "aria-hidden": "true" });
  }

  function loadingLine(text) {
    return h("p", { class: "state state-loading", role: "status" }, spinner(), h("span", {}, text));
  }

  function notice(kind, text, hint, action) {
    // Errors interrupt (role=alert); information waits its turn (role=status).
    return h(
      "div",
      { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" },
      h("p", { class: "notice-text" }, text),
      hint ? h("p", { class: "notice-hint" }, hint) : null,
      action || null,
    );
  }

  function button(label, onclick, { kind = "secondary", small = false, ariaLabel = null, type = "button" } = {}) {
    return h(
      "button",
      { type, class: `btn btn-${kind}${small ? " btn-small" : ""}`, "aria-label": ariaLabel, onclick },
      label,
    );
  }

  /** Mark a button as working: disabled, aria-busy and a spinner; returns a function that restores it. */
  function busy(btn, label) {
    const before = Array.from(btn.childNodes);
    btn.disabled = true;
    btn.setAttribute("aria-busy", "true");
    btn.replaceChildren(spinner(), document.createTextNode(label || btn.textContent));
    return () => {
      btn.disabled = false;
      btn.removeAttribute("aria-busy");
      btn.replaceChildren(...before);
    };
  }

  function say(node, kind, text) {
    node.className = `feedback feedback-${kind}`;
    node.setAttribute("role", kind === "error" ? "alert" : "status");
    node.textContent = text;
  }

  // --- formatting -----------------------------------------------------------------------------------

  function formatAmount(amount, currency) {
    if (amount === null || amount === undefined || amount === "") return "";
    const text = String(amount);
    if (!/^-?\d+(\.\d+)?$/.test(text)) return text; // "•••": hidden by the server's policy
    const number = Number(text);
    // Kopecks only when there are any: "500 000 ₽", "48 320,50 ₽".
    const digits = Number.isInteger(number) ? 0 : 2;
    if (currency) {
      try {
        return new Intl.NumberFormat(LOCALE, {
          style: "currency",
          currency,
          currencyDisplay: "narrowSymbol", // "₽", not "RUB", in every language
          minimumFractionDigits: digits,
          maximumFractionDigits: 2,
        }).format(number);
      } catch {
        /* an unknown currency code: fall through */
      }
    }
    return `${number.toLocaleString(LOCALE, { maximumFractionDigits: 2 })}${currency ? ` ${currency}` : ""}`;
  }

  function parseDate(value) {
    if (!value) return null;
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? null : date;
  }

  function formatWhen(value) {
    const date = parseDate(value);
    if (!date) return "";
    const now = new Date();
    const sameDay = date.toDateString() === now.toDateString();
    const options = sameDay
      ? { hour: "2-digit", minute: "2-digit" }
      : { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" };
    return new Intl.DateTimeFormat(LOCALE, options).format(date);
  }

  /** CRM values are free text; a bare ISO date ("2019-03-14") reads better as a local one. */
  function formatValue(value) {
    const text = value === null || value === undefined ? "—" : String(value);
    const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
    if (!match) return text;
    const date = new Date(Number(match[1]), Number(match[2]) - 1, Number(match[3])); // local, no UTC shift
    if (Number.isNaN(date.getTime())) return text;
    return new Intl.DateTimeFormat(LOCALE, { day: "numeric", month: "long", year: "numeric" }).format(date);
  }

  function formatDeadline(value) {
    const date = parseDate(value);
    if (!date) return "";
    const hasTime = /T\d\d:\d\d/.test(value) && !/T00:00(:00)?/.test(value);
    const options = { day: "numeric", month: "short", year: date.getFullYear() === new Date().getFullYear() ? undefined : "numeric" };
    if (hasTime) Object.assign(options, { hour: "2-digit", minute: "2-digit" });
    return new Intl.DateTimeFormat(LOCALE, options).format(date);
  }

  const STATUS_CLASSES = { open: "pill-open", claimed: "pill-claimed", answered: "pill-answered", resolved: "pill-resolved" };

  function statusPill(status, label) {
    return h("span", { class: `pill ${STATUS_CLASSES[status] || "pill-neutral"}` }, label || status || "—");
  }

  // --- the API --------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, { method = "GET", body } = {}) {
    if (state.expired) throw new ApiError(401, T.sessionExpired);
    const init = {
      method,
      headers: { Authorization: `Bearer ${TOKEN}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch {
      throw new ApiError(0, T.errNetwork);
    }
    if (response.status === 401) {
      sessionExpired();
      throw new ApiError(401, T.sessionExpired);
    }
    if (!response.ok) {
      throw new ApiError(response.status, tr(response.status >= 500 ? "errServer" : "errRequest", { status: response.status }));
    }
    try {
      return await response.json();
    } catch {
      throw new ApiError(response.status, T.errBadAnswer);
    }
  }

  /** A reply's idempotency key: a retry of the same send reuses it, so the customer gets one copy. */
  function newRequestId() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // --- state and layout -----------------------------------------------------------------------------

  const state = {
    expired: false,
    summary: null,
    summaryLoaded: false,
    ticketNotice: null, // {kind, text}: survives the re-render after an action
    replyDraft: "",
    pendingReply: null, // {ticket, text, requestId} until the server answered the send
    lastQuestion: null, // the customer's last message the suggestion was made for
    askSeq: 0,
    suggestionSeq: 0,
    queueTickets: null, // the last queue the server sent
    queueNotices: new Map(), // ticket id -> {kind, text}
    timer: null,
  };

  const app = document.getElementById("app");
  // The shell marks the whole <main> as a live region; re-rendering a section would then read the
  // entire page aloud. Announcements go through the small role=status/alert elements instead.
  app.removeAttribute("aria-live");

  function panel(key, title, ...actions) {
    const headingId = `h-${key}`;
    const body = h("div", { class: "panel-body" });
    const root = h(
      "section",
      { class: `panel panel-${key}`, "aria-labelledby": headingId },
      h("header", { class: "panel-head" }, h("h2", { id: headingId }, title), actions.length ? h("div", { class: "panel-actions" }, actions) : null),
      body,
    );
    return { root, body };
  }

  function setLoading(section, on) {
    if (on) section.root.setAttribute("aria-busy", "true");
    else section.root.removeAttribute("aria-busy");
  }

  const operatorLine = h("span", { class: "topbar-operator" });
  const topbar = h("header", { class: "topbar" }, h("span", { class: "brand" }, T.brand), operatorLine);

  const refreshSuggestionBtn = button(T.refresh, () => loadSuggestion(), { small: true, kind: "ghost", ariaLabel: T.refreshSuggestion });
  const refreshQueueBtn = button(T.refresh, () => loadQueue(), { small: true, kind: "ghost", ariaLabel: T.refreshQueue });

  const sections = {
    customer: panel("customer", T.customerHeading),
    ticket: panel("ticket", T.ticketHeading),
    suggestion: panel("suggestion", T.suggestionHeading, refreshSuggestionBtn),
    ask: panel("ask", T.askHeading),
    queue: panel("queue", T.queueHeading, refreshQueueBtn),
    stats: panel("stats", T.statsHeading),
  };

  // --- session expiry -------------------------------------------------------------------------------

  function sessionExpired() {
    if (state.expired) return;
    state.expired = true;
    if (state.timer) clearInterval(state.timer);
    // Nothing the old session showed stays on screen.
    app.replaceChildren(
      h(
        "section",
        { class: "panel panel-expired", role: "alert" },
        h("h2", {}, T.sessionExpired),
        h("p", { class: "muted" }, T.sessionExpiredHint),
      ),
    );
  }

  // --- customer ---------------------------------------------------------------------------------------

  function keyValues(items) {
    return h(
      "dl",
      { class: "kv" },
      items.map((item) => h("div", { class: "kv-row" }, h("dt", {}, item.label), h("dd", {}, formatValue(item.value)))),
    );
  }

  function renderCustomer(summary) {
    const body = sections.customer.body;
    clear(body);
    const customer = summary.customer;
    if (!customer) {
      if (summary.crm_problem) {
        body.append(notice("info", T.crmUnavailable, T.crmUnavailableHint, button(T.retry, () => loadSummary())));
      } else {
        body.append(h("p", { class: "muted" }, T.noCustomer));
      }
      return;
    }
    body.append(h("p", { class: "customer-name" }, customer.name || "—"));
    if (customer.contacts && customer.contacts.length) {
      body.append(h("h3", { class: "subheading" }, T.contacts), keyValues(customer.contacts));
    }
    if (customer.values && customer.values.length) {
      body.append(h("h3", { class: "subheading" }, T.details), keyValues(customer.values));
    }

    const deals = customer.deals || [];
    const active = deals.filter((d) => !d.closed);
    const closed = deals.length - active.length;
    body.append(h("h3", { class: "subheading" }, T.products));
    if (!active.length) body.append(h("p", { class: "muted" }, T.noProducts));
    else {
      body.append(
        h(
          "ul",
          { class: "products" },
          active.map((deal) =>
            h(
              "li",
              { class: "product" },
              h(
                "div",
                { class: "product-head" },
                h("span", { class: "product-title" }, deal.title || "—"),
                deal.amount !== null && deal.amount !== undefined
                  ? h("span", { class: "product-amount" }, formatAmount(deal.amount, deal.currency))
                  : null,
              ),
              deal.stage ? h("div", { class: "product-meta" }, h("span", { class: "pill pill-neutral" }, deal.stage)) : null,
              deal.values && deal.values.length
                ? h("details", { class: "product-details", "data-key": `deal:${deal.id}` }, h("summary", {}, T.productDetails), keyValues(deal.values))
                : null,
            ),
          ),
        ),
      );
    }
    if (closed) body.append(h("p", { class: "muted small" }, tr("closedProducts", { n: closed })));

    const tasks = (customer.tasks || []).filter((t) => !t.done);
    body.append(h("h3", { class: "subheading" }, T.tasks));
    if (!tasks.length) body.append(h("p", { class: "muted" }, T.noTasks));
    else {
      body.append(
        h(
          "ul",
          { class: "tasks" },
          tasks.map((task) =>
            h(
              "li",
              { class: "task" },
              h("span", { class: "task-title" }, task.title || "—"),
              task.deadline ? h("span", { class: "task-deadline" }, tr("deadline", { date: formatDeadline(task.deadline) })) : null,
            ),
          ),
        ),
      );
    }
  }

  // --- ticket and conversation ------------------------------------------------------------------------

  function renderTicket(summary) {
    const body = sections.ticket.body;
    clear(body);
    const ticket = summary.ticket;
    if (state.ticketNotice) {
      const feedback = h("p", {});
      say(feedback, state.ticketNotice.kind, state.ticketNotice.text);
      body.append(feedback);
    }
    if (!ticket) body.append(h("p", { class: "muted" }, T.noTicket));
    else body.append(ticketCard(ticket));
    body.append(conversation(summary.conversation || []));
    const chat = body.querySelector(".chat");
    if (chat) chat.scrollTop = chat.scrollHeight; // the latest messages first in view
  }

  function ticketCard(ticket) {
    const id = ticket.id;
    const feedback = h("p", { class: "feedback", role: "status" });
    const rows = [
      { label: T.reason, value: ticket.reason_label || "—" },
      { label: T.waiting, value: ticket.waiting || "—" },
      { label: T.operator, value: ticket.operator || T.nobody },
    ];
    const card = h(
      "div",
      { class: "ticket" },
      h("div", { class: "ticket-head" }, h("h3", { class: "ticket-title" }, tr("ticket", { id })), statusPill(ticket.status, ticket.status_label)),
      keyValues(rows),
      ticket.summary ? h("p", { class: "ticket-summary" }, h("span", { class: "label" }, `${T.summary}: `), ticket.summary) : null,
    );

    const replyId = uid("reply");
    const hintId = uid("reply-hint");
    const textarea = h("textarea", {
      id: replyId,
      class: "input textarea",
      rows: "3",
      maxlength: "4000",
      "aria-describedby": hintId,
    });
    textarea.value = state.replyDraft;
    textarea.addEventListener("input", () => {
      state.replyDraft = textarea.value;
    });
    textarea.addEventListener("keydown", (event) => {
      // Ctrl+Enter (⌘+Enter) sends, as in the CRM's own comment boxes; Enter alone is a new line.
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        textarea.form.requestSubmit();
      }
    });

    if (ticket.draft) {
      card.append(
        h(
          "details",
          { class: "draft", "data-key": "draft" },
          h("summary", {}, T.draft),
          h("p", { class: "answer-text" }, ticket.draft),
          button(T.useDraft, () => {
            textarea.value = ticket.draft;
            state.replyDraft = ticket.draft;
            textarea.focus();
          }, { small: true }),
        ),
      );
    }

    const actions = h("div", { class: "actions" });
    if (ticket.status === "open") {
      const claim = button(T.claim, () => ticketAction("claim", id, claim, feedback), { kind: "primary", ariaLabel: tr("claimTicket", { id }) });
      actions.append(claim);
    }
    if (ticket.status !== "resolved") {
      const resolve = button(T.resolve, () => ticketAction("resolve", id, resolve, feedback), { ariaLabel: tr("resolveTicket", { id }) });
      actions.append(resolve);
    }
    card.append(actions);

    const send = button(T.send, null, { kind: "primary", type: "submit" });
    const form = h(
      "form",
      {
        class: "reply",
        onsubmit: (event) => {
          event.preventDefault();
          const text = textarea.value.trim();
          if (!text) {
            say(feedback, "error", T.replyEmpty);
            textarea.focus();
            return;
          }
          ticketAction("reply", id, send, feedback, text);
        },
      },
      h("label", { for: replyId, class: "field-label" }, T.replyLabel),
      textarea,
      h("p", { id: hintId, class: "hint" }, T.replyHint),
      h("div", { class: "actions" }, send),
    );
    card.append(form, feedback);
    return card;
  }

  /** Claim, reply or resolve; a refusal (another operator has the ticket) is shown as the API words it. */
  async function ticketAction(kind, id, btn, feedback, text) {
    const done = busy(btn, kind === "reply" ? T.sending : null);
    try {
      let result;
      if (kind === "claim") {
        result = await api(`/widget/api/tickets/${encodeURIComponent(id)}/claim`, { method: "POST" });
        const mine = !result.ok && result.holder && result.holder === state.summary?.operator;
        if (result.ok || mine) state.ticketNotice = { at: Date.now(), kind: "success", text: tr("claimed", { id }) };
        else state.ticketNotice = { at: Date.now(), kind: "error", text: result.holder ? tr("claimLost", { id, name: result.holder }) : tr("ticketGone", { id }) };
      } else if (kind === "reply") {
        const pending = state.pendingReply;
        if (!pending || pending.ticket !== id || pending.text !== text) {
          state.pendingReply = { ticket: id, text, requestId: newRequestId() };
        }
        result = await api(`/widget/api/tickets/${encodeURIComponent(id)}/reply`, {
          method: "POST",
          body: { text, request_id: state.pendingReply.requestId },
        });
        state.pendingReply = null; // answered: the next send is a new message
        if (result.ok) {
          state.replyDraft = "";
          state.ticketNotice = { at: Date.now(), kind: "success", text: T.replySent };
        } else {
          state.ticketNotice = { at: Date.now(), kind: "error", text: result.error || T.refused };
        }
      } else {
        result = await api(`/widget/api/tickets/${encodeURIComponent(id)}/resolve`, { method: "POST" });
        state.ticketNotice = result.ok
          ? { at: Date.now(), kind: "success", text: tr("resolved", { id }) }
          : { at: Date.now(), kind: "error", text: result.error || T.refused };
      }
    } catch (error) {
      if (error.status === 401) return;
      done();
      say(feedback, "error", error.message);
      return;
    }
    done();
    await Promise.all([loadSummary({ quiet: true }), loadQueue({ quiet: true })]);
    focusTicketFeedback();
  }

  function focusTicketFeedback() {
    // After a re-render the pressed button is gone; keep keyboard users in the same place.
    const target = sections.ticket.body.querySelector(".feedback") || sections.ticket.body;
    target.setAttribute("tabindex", "-1");
    target.focus({ preventScroll: false });
  }

  function conversation(messages) {
    const wrap = h("div", { class: "conversation" }, h("h3", { class: "subheading" }, T.conversation));
    if (!messages.length) {
      wrap.append(h("p", { class: "muted" }, T.noConversation));
      return wrap;
    }
    wrap.append(
      h(
        "ol",
        { class: "chat" },
        messages.map((m) => {
          const role = ["customer", "assistant", "operator"].includes(m.role) ? m.role : "assistant";
          return h(
            "li",
            { class: `msg msg-${role}` },
            h("div", { class: "msg-meta" }, h("span", { class: "msg-role" }, T[`role_${role}`]), m.at ? h("time", { datetime: m.at }, formatWhen(m.at)) : null),
            h("div", { class: "msg-text" }, m.text || ""),
          );
        }),
      ),
    );
    return wrap;
  }

  async function loadSummary({ quiet = false } = {}) {
    if (!quiet || !state.summaryLoaded) {
      clear(sections.customer.body);
      sections.customer.body.append(loadingLine(T.loadingCustomer));
      clear(sections.ticket.body);
      sections.ticket.body.append(loadingLine(T.loading));
    }
    setLoading(sections.customer, true);
    let summary;
    try {
      summary = await api("/widget/api/summary");
    } catch (error) {
      if (error.status === 401) return;
      if (!quiet || !state.summaryLoaded) {
        clear(sections.customer.body);
        sections.customer.body.append(notice("error", error.message, null, button(T.retry, () => loadSummary())));
        clear(sections.ticket.body);
      }
      return;
    } finally {
      setLoading(sections.customer, false);
    }
    state.summary = summary;
    state.summaryLoaded = true;
    operatorLine.textContent = summary.operator ? `${T.operatorPrefix}: ${summary.operator}` : "";
    update(sections.customer.body, [summary.customer, summary.crm_problem], () => renderCustomer(summary));
    const aboutCustomer = Boolean(summary.customer || summary.crm_problem);
    sections.ticket.root.hidden = !aboutCustomer;
    sections.suggestion.root.hidden = !aboutCustomer;
    if (aboutCustomer) {
      update(sections.ticket.body, [summary.ticket, summary.conversation, state.ticketNotice], () => renderTicket(summary));
    }
    // The queue marks this customer's ticket; it may have loaded first.
    if (state.queueTickets) renderQueue(state.queueTickets);
    // A new message from the customer makes the old suggestion stale.
    const last = [...(summary.conversation || [])].reverse().find((m) => m.role === "customer");
    const question = last ? last.text : null;
    if (!quiet) state.lastQuestion = question; // start() asks for the first suggestion
    else if (aboutCustomer && question !== state.lastQuestion) {
      state.lastQuestion = question;
      loadSuggestion();
    }
  }

  // --- answers (suggestion and ask) -------------------------------------------------------------------

  function sourcesList(sources, heading) {
    if (!sources || !sources.length) return null;
    return h(
      "div",
      { class: "sources" },
      h("h4", { class: "sources-heading" }, heading),
      h(
        "ol",
        { class: "sources-list" },
        sources.map((s) => {
          const title = s.title || s.source_id || "—";
          const href = safeUrl(s.url);
          const label = href
            ? h("a", { href, target: "_blank", rel: "noopener noreferrer" }, title)
            : h("span", {}, title);
          return h(
            "li",
            { class: "source" },
            h("span", { class: "source-n" }, `[${s.n}]`),
            h("span", { class: "source-body" }, label, s.heading && s.heading !== title ? h("span", { class: "source-heading" }, ` — ${s.heading}`) : null),
          );
        }),
      ),
    );
  }

  async function copyText(text, node, feedback) {
    try {
      await navigator.clipboard.writeText(text);
      say(feedback, "success", T.copied);
      return;
    } catch {
      /* no clipboard access in this frame (permissions policy, insecure context): select instead */
    }
    const selection = window.getSelection();
    const range = document.createRange();
    range.selectNodeContents(node);
    selection.removeAllRanges();
    selection.addRange(range);
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch {
      copied = false;
    }
    say(feedback, copied ? "success" : "info", copied ? T.copied : T.copySelected);
  }

  async function insertNote(text, btn, feedback) {
    const done = busy(btn, T.inserting);
    try {
      const result = await api("/widget/api/note", { method: "POST", body: { text } });
      if (result.ok) say(feedback, "success", T.inserted);
      else say(feedback, "error", tr("insertFailed", { error: result.error || "?" }));
    } catch (error) {
      if (error.status !== 401) say(feedback, "error", error.message);
    } finally {
      if (!state.expired) done();
    }
  }

  /** An answer of the knowledge base: its text, a note on how it was made, sources, Copy / Insert. */
  function answerBlock(answer) {
    const wrap = h("div", { class: "answer" });
    if (answer.escalate) {
      wrap.append(notice("info", T.noConfidentAnswer));
      const near = sourcesList(answer.sources, T.nearDocuments);
      if (near) wrap.append(near);
      return wrap;
    }
    const textNode = h("p", { class: "answer-text" }, answer.text || "");
    wrap.append(textNode);
    if (answer.mode === "extractive") wrap.append(h("p", { class: "hint" }, T.extractive));
    const sources = sourcesList(answer.sources, T.sources);
    if (sources) wrap.append(sources);
    const feedback = h("p", { class: "feedback", role: "status" });
    const copyBtn = button(T.copy, () => copyText(answer.text || "", textNode, feedback));
    const insertBtn = button(T.insert, () => insertNote(answer.text || "", insertBtn, feedback), { kind: "primary" });
    wrap.append(h("div", { class: "actions" }, copyBtn, insertBtn), feedback);
    return wrap;
  }

  async function loadSuggestion() {
    const seq = ++state.suggestionSeq;
    const body = sections.suggestion.body;
    clear(body);
    body.append(loadingLine(T.loadingSuggestion));
    setLoading(sections.suggestion, true);
    refreshSuggestionBtn.disabled = true;
    let result;
    try {
      result = await api("/widget/api/suggestion");
    } catch (error) {
      if (seq !== state.suggestionSeq || error.status === 401) return;
      clear(body);
      body.append(notice("error", error.message, null, button(T.retry, () => loadSuggestion())));
      return;
    } finally {
      if (seq === state.suggestionSeq) {
        setLoading(sections.suggestion, false);
        refreshSuggestionBtn.disabled = false;
      }
    }
    if (seq !== state.suggestionSeq) return; // a newer request owns the section
    clear(body);
    const suggestion = result.suggestion;
    if (!suggestion) {
      body.append(h("p", { class: "muted" }, T.noSuggestion));
      return;
    }
    body.append(
      h("blockquote", { class: "question" }, h("span", { class: "label" }, `${T.customerAsked}: `), suggestion.question),
      answerBlock(suggestion.answer || {}),
    );
  }

  function buildAsk() {
    const inputId = uid("ask");
    const input = h("input", { id: inputId, class: "input", type: "text", maxlength: "4000", placeholder: T.askPlaceholder, autocomplete: "off" });
    const submit = button(T.ask, null, { kind: "primary", type: "submit" });
    const result = h("div", { class: "ask-result" });
    const form = h(
      "form",
      {
        class: "ask",
        role: "search",
        onsubmit: async (event) => {
          event.preventDefault();
          const question = input.value.trim();
          if (!question) {
            clear(result);
            result.append(notice("info", T.askEmpty));
            input.focus();
            return;
          }
          const seq = ++state.askSeq;
          const done = busy(submit, T.ask);
          sections.ask.root.setAttribute("aria-busy", "true");
          clear(result);
          result.append(loadingLine(T.asking));
          try {
            const answer = await api("/widget/api/ask", { method: "POST", body: { question } });
            if (seq !== state.askSeq) return;
            clear(result);
            result.append(answerBlock(answer));
          } catch (error) {
            if (seq !== state.askSeq || error.status === 401) return;
            clear(result);
            result.append(notice("error", error.message));
          } finally {
            if (seq === state.askSeq && !state.expired) {
              done();
              sections.ask.root.removeAttribute("aria-busy");
            }
          }
        },
      },
      h("label", { for: inputId, class: "field-label" }, T.askLabel),
      h("div", { class: "ask-row" }, input, submit),
    );
    sections.ask.body.append(form, result);
  }

  // --- queue --------------------------------------------------------------------------------------------

  const queueList = h("div", { class: "queue-list" });
  const queueFooter = h("p", { class: "hint queue-footer", role: "status" });
  let queueLoaded = false;

  function renderQueue(tickets) {
    const current = state.summary && state.summary.ticket ? state.summary.ticket.id : null;
    update(queueList, [tickets, current, [...state.queueNotices]], () => renderQueueList(tickets, current));
  }

  function renderQueueList(tickets, current) {
    clear(queueList);
    if (!tickets.length) {
      queueList.append(h("p", { class: "muted" }, T.queueEmpty));
      return;
    }
    queueList.append(
      h(
        "ul",
        { class: "queue" },
        tickets.map((t) => {
          const feedback = h("p", { class: "feedback", role: "status" });
          const saved = state.queueNotices.get(t.id);
          if (saved) say(feedback, saved.kind, saved.text);
          let claim = null;
          if (t.status === "open") {
            claim = button(T.claim, () => queueClaim(t.id, claim, feedback), { small: true, kind: "primary", ariaLabel: tr("claimTicket", { id: t.id }) });
          }
          return h(
            "li",
            { class: `queue-item${t.id === current ? " is-current" : ""}` },
            h(
              "div",
              { class: "queue-head" },
              h("span", { class: "queue-id" }, `#${t.id}`),
              statusPill(t.status, t.status_label),
              h("span", { class: "queue-waiting" }, t.waiting || ""),
            ),
            h(
              "div",
              { class: "queue-who" },
              h("span", { class: "queue-customer" }, t.customer || "—"),
              t.id === current ? h("span", { class: "tag" }, T.thisCustomer) : null,
              t.reason_label ? h("span", { class: "queue-reason" }, ` · ${t.reason_label}`) : null,
            ),
            t.summary ? h("p", { class: "queue-summary" }, t.summary) : null,
            h("div", { class: "queue-foot" }, t.operator ? h("span", { class: "muted small" }, tr("takenBy", { name: t.operator })) : h("span", {}), claim),
            feedback,
          );
        }),
      ),
    );
  }

  async function queueClaim(id, btn, feedback) {
    const done = busy(btn);
    try {
      const result = await api(`/widget/api/tickets/${encodeURIComponent(id)}/claim`, { method: "POST" });
      const mine = result.ok || (result.holder && result.holder === state.summary?.operator);
      state.queueNotices.set(id, mine
        ? { kind: "success", text: tr("claimed", { id }) }
        : { kind: "error", text: result.holder ? tr("claimLost", { id, name: result.holder }) : tr("ticketGone", { id }) });
    } catch (error) {
      if (error.status === 401) return;
      done();
      say(feedback, "error", error.message);
      return;
    }
    done();
    await Promise.all([loadQueue({ quiet: true }), loadSummary({ quiet: true })]);
  }

  async function loadQueue({ quiet = false } = {}) {
    if (!quiet || !queueLoaded) {
      clear(queueList);
      queueList.append(loadingLine(T.loadingQueue));
    }
    setLoading(sections.queue, true);
    refreshQueueBtn.disabled = true;
    try {
      const result = await api("/widget/api/queue");
      queueLoaded = true;
      state.queueTickets = result.tickets || [];
      renderQueue(state.queueTickets);
      const time = new Intl.DateTimeFormat(LOCALE, { hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(new Date());
      queueFooter.className = "hint queue-footer";
      queueFooter.textContent = tr("updatedAt", { time });
    } catch (error) {
      if (error.status === 401) return;
      if (!queueLoaded) {
        clear(queueList);
        queueList.append(notice("error", error.message, null, button(T.retry, () => loadQueue())));
        queueFooter.textContent = "";
      } else {
        queueFooter.className = "hint queue-footer feedback-error";
        queueFooter.textContent = tr("staleQueue", { error: error.status || "—" });
      }
    } finally {
      setLoading(sections.queue, false);
      refreshQueueBtn.disabled = false;
    }
  }

  // --- statistics (the admin view of `perimeter report`) ---------------------------------------------------

  function pct(share) {
    return share === null || share === undefined ? "—" : `${Math.round(share * 100)}%`;
  }

  function buildStats() {
    const body = h("div", { class: "stats-body" });
    const details = h("details", { class: "stats" }, h("summary", {}, T.statsShow), body);
    // Loaded when opened: the figures cost a few queries and most visits do not need them.
    details.addEventListener("toggle", () => {
      if (details.open) loadStats(body);
    });
    sections.stats.body.append(details);
  }

  async function loadStats(body) {
    clear(body);
    body.append(loadingLine(T.loading || "…"));
    try {
      const r = await api("/widget/api/report?days=7");
      const total = r.latency.find((s) => s.stage === "total");
      const seconds = LANG === "ru" ? "с" : "s";
      const p95 = total && total.p95 !== null ? `${total.p95.toLocaleString(LOCALE, { maximumFractionDigits: 1 })} ${seconds}` : "—";
      const saving = r.cost.saving_time_used === null ? "—" : formatAmount(r.cost.saving_time_used.toFixed(2), null);
      const tile = (label, value) => h("div", { class: "stat" }, h("span", { class: "stat-value" }, value), h("span", { class: "stat-label" }, label));
      const top = r.escalations.by_reason.slice(0, 3);
      clear(body);
      const parts = [
        h("div", { class: "stat-tiles" },
          tile(T.statsQuestions, String(r.totals.questions)),
          tile(T.statsClosed, pct(r.totals.closed_without_operator_share)),
          tile(T.statsP95, p95),
          tile(T.statsThumbs, pct(r.feedback.up_share)),
          tile(T.statsCache, pct(r.cache.hit_rate)),
          tile(T.statsSaving, `${saving} ${r.cost.inputs.currency || ""}`.trim())),
      ];
      if (top.length) parts.push(h("p", { class: "hint" }, `${T.statsEscalations}: ${top.map((e) => `${e.label} (${e.count})`).join(", ")}`));
      parts.push(h("p", { class: "hint" }, T.statsHint));
      body.append(...parts);
    } catch (error) {
      if (error.status === 401) return;
      clear(body);
      body.append(notice("error", error.message, null, button(T.retry, () => loadStats(body))));
    }
  }

  // --- start ---------------------------------------------------------------------------------------------

  function tick() {
    if (state.expired || document.hidden) return;
    loadQueue({ quiet: true });
    // Pick up the customer's new messages, unless the operator is typing a reply (the re-render
    // would take the cursor away).
    const typing = document.activeElement && document.activeElement.tagName === "TEXTAREA";
    if (typing || state.replyDraft.trim()) return;
    // The outcome of the last action stays on screen for a minute, then makes way.
    if (state.ticketNotice && Date.now() - state.ticketNotice.at > 60000) state.ticketNotice = null;
    loadSummary({ quiet: true });
  }

  function start() {
    if (!TOKEN) {
      sessionExpired();
      return;
    }
    document.documentElement.lang = LANG;
    app.replaceChildren(topbar, ...Object.values(sections).map((s) => s.root));
    sections.queue.body.append(queueList, queueFooter);
    buildAsk();
    buildStats();
    loadSummary().then(() => {
      if (!state.expired && !sections.suggestion.root.hidden) loadSuggestion();
    });
    loadQueue();
    state.timer = setInterval(tick, QUEUE_REFRESH_MS);
  }

  start();
})();
