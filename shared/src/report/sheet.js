// Draws the cards of the contact sheet a page at a time, from the JSON in
// <script id="cards">. Every string from the data goes into the page as text
// (textContent, setAttribute), never as markup.
"use strict";

(function () {
  const PAGE_SIZE = 120;
  const VIDEO_FILE = /\.(mp4|webm|mov|m4v)$/i;

  const cards = JSON.parse(document.getElementById("cards").textContent);
  const position = new Map(cards.map((card, i) => [card.id, i]));
  const grid = document.getElementById("grid");
  const filterInput = document.getElementById("filter");
  const statusSelect = document.getElementById("status");
  const count = document.getElementById("count");
  const pagers = [document.getElementById("pager-top"), document.getElementById("pager-bottom")];

  let shown = cards;
  let page = 0;

  // --- building elements ---------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function jobLink(id, label) {
    const link = el("a", "job-link", label);
    link.setAttribute("href", "#job-" + id);
    link.dataset.job = id;
    return link;
  }

  function image(url, alt) {
    const img = el("img");
    img.setAttribute("loading", "lazy");
    img.setAttribute("decoding", "async");
    img.setAttribute("src", url);
    img.setAttribute("alt", alt);
    return img;
  }

  function video(url, poster) {
    const node = el("video");
    node.muted = true;
    node.loop = true;
    node.playsInline = true;
    node.setAttribute("muted", "");
    node.setAttribute("playsinline", "");
    if (poster) {
      node.setAttribute("preload", "none");
      node.setAttribute("poster", poster);
    } else {
      node.setAttribute("preload", "metadata");
    }
    node.setAttribute("src", url);
    node.addEventListener("mouseenter", () => node.play().catch(() => {}));
    node.addEventListener("mouseleave", () => node.pause());
    return node;
  }

  function media(card) {
    const box = el("div", "media");
    if (card.urls.length === 0) {
      box.classList.add("empty");
      box.append(el("span", "", card.status));
      return box;
    }
    const url = card.urls[0];
    const isVideo = VIDEO_FILE.test(card.files[0]) || (card.kind === "video" && !/\.(png|jpe?g|webp|gif)$/i.test(card.files[0]));
    const link = el("a");
    link.setAttribute("href", url);
    link.setAttribute("target", "_blank");
    link.setAttribute("rel", "noopener");
    if (isVideo) box.classList.add("video");
    link.append(isVideo ? video(url, card.poster_url) : image(url, card.prompt));
    box.append(link);
    if (card.urls.length > 1) box.append(el("span", "more", "+" + (card.urls.length - 1)));
    return box;
  }

  function row(list, label, value, className) {
    if (value === undefined || value === null || value === "") return;
    list.append(el("dt", "", label));
    const dd = el("dd", className || "");
    if (value instanceof Node) dd.append(value);
    else dd.textContent = String(value);
    list.append(dd);
  }

  function links(ids) {
    const span = el("span", "links");
    ids.forEach((id, i) => {
      if (i > 0) span.append(", ");
      span.append(jobLink(id, id));
    });
    return span;
  }

  function fileLinks(card) {
    const span = el("span", "files");
    card.files.forEach((file, i) => {
      if (i > 0) span.append(", ");
      const link = el("a", "", file.split("/").pop());
      link.setAttribute("href", card.urls[i]);
      link.setAttribute("target", "_blank");
      link.setAttribute("rel", "noopener");
      span.append(link);
    });
    return span;
  }

  function review(card) {
    if (!card.review) return null;
    const approved = card.review.approved;
    const text = (approved ? "✓ approved" : "✗ rejected") + (card.review.reason ? ": " + card.review.reason : "");
    return el("p", "review " + (approved ? "approved" : "rejected"), text);
  }

  function cardElement(card) {
    const article = el("article", "card");
    article.id = "job-" + card.id;
    article.dataset.status = card.status;
    article.dataset.kind = card.kind;
    article.append(media(card));

    const body = el("div", "body");
    const head = el("div", "head");
    head.append(el("span", "status status-" + card.status.replace(/[^A-Za-z0-9]/g, "-").toLowerCase(), card.status));
    head.append(el("span", "kind", card.kind));
    if (card.cost) head.append(el("span", "cost", card.cost));
    body.append(head);

    const verdict = review(card);
    if (verdict) body.append(verdict);
    if (card.error) body.append(el("p", "error", card.error));
    if (card.waiting) body.append(el("p", "waiting", "waiting: " + card.waiting));

    const prompt = el("p", "prompt", card.prompt);
    prompt.setAttribute("title", card.prompt);
    body.append(prompt);
    if (card.negative_prompt) body.append(el("p", "negative", "not: " + card.negative_prompt));

    const facts = el("dl", "facts");
    row(facts, "model", card.model);
    if (card.tenant) row(facts, "tenant", card.tenant);
    row(facts, "attempts", card.attempts + "/" + card.max_attempts);
    if (card.parent) row(facts, "parent", links([card.parent]));
    if (card.children.length) row(facts, "children", links(card.children));
    if (card.files.length) row(facts, "files", fileLinks(card));
    row(facts, "created", card.created_at);
    row(facts, "id", card.id, "id");
    body.append(facts);

    article.append(body);
    return article;
  }

  // --- filtering and paging ------------------------------------------------

  function haystack(card) {
    if (card._haystack === undefined) {
      card._haystack = (card.id + "\n" + card.prompt + "\n" + (card.negative_prompt || "") + "\n" + (card.tenant || "")).toLowerCase();
    }
    return card._haystack;
  }

  function applyFilters() {
    const text = filterInput.value.trim().toLowerCase();
    const status = statusSelect.value;
    shown = cards.filter((card) => (!status || card.status === status) && (!text || haystack(card).includes(text)));
  }

  function pageCount() {
    return Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
  }

  function pager(nav) {
    nav.replaceChildren();
    const prev = el("button", "prev", "‹ prev");
    prev.type = "button";
    prev.disabled = page === 0;
    prev.addEventListener("click", () => showPage(page - 1));
    const next = el("button", "next", "next ›");
    next.type = "button";
    next.disabled = page >= pageCount() - 1;
    next.addEventListener("click", () => showPage(page + 1));
    nav.append(prev, el("span", "page-info", "page " + (page + 1) + " of " + pageCount()), next);
  }

  function render() {
    const slice = shown.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
    const fragment = document.createDocumentFragment();
    slice.forEach((card) => fragment.append(cardElement(card)));
    grid.replaceChildren(fragment);
    if (slice.length === 0) grid.append(el("p", "nothing", "No job matches the filter."));
    count.textContent = shown.length === cards.length ? cards.length + " jobs" : shown.length + " of " + cards.length + " jobs";
    pagers.forEach(pager);
  }

  function showPage(n) {
    page = Math.min(Math.max(0, n), pageCount() - 1);
    render();
    window.scrollTo(0, 0);
  }

  // Shows the card of job `id`, on whatever page it is; clears the filters
  // first if they hide it.
  function showJob(id) {
    if (!position.has(id)) return;
    let index = shown.findIndex((card) => card.id === id);
    if (index < 0) {
      filterInput.value = "";
      statusSelect.value = "";
      applyFilters();
      index = position.get(id);
    }
    page = Math.floor(index / PAGE_SIZE);
    render();
    const target = document.getElementById("job-" + id);
    target.scrollIntoView({ block: "center" });
    grid.querySelectorAll(".card.target").forEach((card) => card.classList.remove("target"));
    target.classList.add("target");
  }

  function jobFromHash() {
    return decodeURIComponent(location.hash.replace(/^#job-/, ""));
  }

  // --- wiring ------------------------------------------------------------------

  [...new Set(cards.map((card) => card.status))].sort().forEach((status) => {
    const option = el("option", "", status);
    option.value = status;
    statusSelect.append(option);
  });

  let typing;
  filterInput.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      applyFilters();
      showPage(0);
    }, 150);
  });
  statusSelect.addEventListener("change", () => {
    applyFilters();
    showPage(0);
  });
  grid.addEventListener("click", (event) => {
    const link = event.target.closest("a.job-link");
    if (!link) return;
    event.preventDefault();
    history.pushState(null, "", "#job-" + link.dataset.job);
    showJob(link.dataset.job);
  });
  window.addEventListener("hashchange", () => showJob(jobFromHash()));

  render();
  if (location.hash.startsWith("#job-")) showJob(jobFromHash());
})();
