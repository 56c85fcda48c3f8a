(function () {
  'use strict';
  // Keeps every [data-metric] element current from the page's stream of
  // figures. The browser's EventSource reconnects by itself when the
  // stream ends (a server restart, Cloud Run's hour limit).
  var connection = document.getElementById('connection');
  var at = document.getElementById('at');
  var error = document.getElementById('error');
  var main = document.getElementById('figures');

  function text(value) {
    if (value === null || value === undefined) { return '\u2013'; }
    return String(value);
  }

  function section(group) {
    var found = main.querySelector('section[data-group="' + CSS.escape(group) + '"]');
    if (found) { return found; }
    var created = document.createElement('section');
    created.dataset.group = group;
    var title = document.createElement('h2');
    title.textContent = group;
    created.appendChild(title);
    created.appendChild(document.createElement('dl'));
    main.appendChild(created);
    return created;
  }

  function element(name) {
    var found = main.querySelector('[data-metric="' + CSS.escape(name) + '"]');
    if (found) { return found; }
    var dot = name.indexOf('.');
    var group = dot < 0 ? name : name.slice(0, dot);
    var row = document.createElement('div');
    row.className = 'figure';
    var label = document.createElement('dt');
    label.textContent = dot < 0 ? name : name.slice(dot + 1);
    var value = document.createElement('dd');
    value.dataset.metric = name;
    row.appendChild(label);
    row.appendChild(value);
    section(group).querySelector('dl').appendChild(row);
    return value;
  }

  // A series (per minute, oldest first) as a line scaled to its largest
  // value, with the last value as text.
  var SVG = 'http://www.w3.org/2000/svg';
  function draw(target, values) {
    target.dataset.value = JSON.stringify(values);
    var line = target.querySelector('polyline');
    if (!line) {
      target.textContent = '';
      var svg = document.createElementNS(SVG, 'svg');
      svg.setAttribute('class', 'spark');
      svg.setAttribute('viewBox', '0 0 ' + Math.max(values.length - 1, 1) + ' 20');
      svg.setAttribute('preserveAspectRatio', 'none');
      svg.setAttribute('aria-hidden', 'true');
      line = document.createElementNS(SVG, 'polyline');
      svg.appendChild(line);
      target.appendChild(svg);
      var now = document.createElement('span');
      now.className = 'now';
      target.appendChild(now);
      target.parentNode.classList.add('series');
    }
    var top = Math.max.apply(null, values.concat([1]));
    line.setAttribute('points', values.map(function (v, i) {
      return i + ',' + (20 - (v / top) * 19).toFixed(2);
    }).join(' '));
    target.querySelector('.now').textContent = text(values[values.length - 1]);
  }
  Array.prototype.forEach.call(main.querySelectorAll('[data-value]'), function (target) {
    draw(target, JSON.parse(target.dataset.value));
  });

  function show(snapshot) {
    var figures = snapshot.figures || {};
    Object.keys(figures).forEach(function (name) {
      var target = element(name);
      if (Array.isArray(figures[name])) {
        if (target.dataset.value !== JSON.stringify(figures[name])) { draw(target, figures[name]); }
        return;
      }
      if (figures[name] === 0) {
        target.parentNode.setAttribute('data-zero', '');
      } else {
        target.parentNode.removeAttribute('data-zero');
      }
      var value = text(figures[name]);
      if (target.textContent !== value) {
        target.textContent = value;
        target.classList.remove('changed');
        void target.offsetWidth;
        target.classList.add('changed');
      }
    });
    at.textContent = snapshot.at;
    at.setAttribute('datetime', snapshot.at);
    error.hidden = !snapshot.error;
    error.textContent = snapshot.error ? 'the store could not be read: ' + snapshot.error : '';
  }

  function state(name, words) {
    connection.dataset.state = name;
    connection.textContent = words;
  }

  var source = new EventSource(document.body.dataset.events);
  source.addEventListener('figures', function (event) {
    state('live', 'live');
    show(JSON.parse(event.data));
  });
  source.addEventListener('open', function () { state('live', 'live'); });
  source.addEventListener('error', function () { state('reconnecting', 'reconnecting…'); });
}());

(function () {
  'use strict';
  // Review by clicking: the images to review as cards, with approve,
  // reject and promote on each, keyboard review (j/k or arrows to move,
  // a approve, r reject, p promote, x select) and actions on a selection.
  // Every action goes through the server's own checks; its refusal is
  // shown on the card.
  var grid = document.getElementById('cards');
  var more = document.getElementById('more');
  var reason = document.getElementById('reason');
  var selected = document.getElementById('selected');
  var next = null;
  var current = -1;

  function cards() { return Array.prototype.slice.call(grid.querySelectorAll('.card')); }

  function button(action, id, words) {
    var b = document.createElement('button');
    b.type = 'button';
    b.dataset.action = action;
    b.dataset.job = id;
    b.textContent = words;
    return b;
  }

  function fill(card, data) {
    card.dataset.status = data.status;
    card.dataset.verdict = data.verdict || '';
    card.querySelector('.status').textContent = data.status + (data.verdict ? ' \u00b7 ' + data.verdict : '');
    card.querySelector('.reason').textContent = data.reason || '';
    card.querySelector('.videos').textContent = data.videos.length ? 'video: ' + data.videos.join(', ') : '';
  }

  function make(data) {
    var card = document.createElement('article');
    card.className = 'card';
    card.id = 'job-' + data.id;
    card.dataset.job = data.id;
    card.tabIndex = -1;
    var pick = document.createElement('input');
    pick.type = 'checkbox';
    pick.className = 'pick';
    pick.setAttribute('aria-label', 'select ' + data.id);
    card.appendChild(pick);
    if (data.files.length) {
      var img = document.createElement('img');
      img.loading = 'lazy';
      img.alt = data.prompt;
      img.src = data.files[0];
      card.appendChild(img);
    } else {
      var none = document.createElement('div');
      none.className = 'nofile';
      none.textContent = 'no file on this machine';
      card.appendChild(none);
    }
    var prompt = document.createElement('p');
    prompt.className = 'prompt';
    prompt.textContent = data.prompt;
    card.appendChild(prompt);
    var id = document.createElement('p');
    id.className = 'id';
    id.textContent = data.id;
    card.appendChild(id);
    ['status', 'reason', 'videos', 'card-error'].forEach(function (name) {
      var p = document.createElement('p');
      p.className = name;
      card.appendChild(p);
    });
    var actions = document.createElement('div');
    actions.className = 'actions';
    actions.appendChild(button('approve', data.id, 'Approve'));
    actions.appendChild(button('reject', data.id, 'Reject'));
    actions.appendChild(button('promote', data.id, 'Promote'));
    card.appendChild(actions);
    fill(card, data);
    return card;
  }

  function load() {
    var url = '/ui/cards' + (next ? '?after=' + encodeURIComponent(next) : '');
    return fetch(url, { headers: { accept: 'application/json' } })
      .then(function (r) { return r.json(); })
      .then(function (page) {
        page.cards.forEach(function (data) {
          if (!document.getElementById('job-' + data.id)) { grid.appendChild(make(data)); }
        });
        next = page.next || null;
        more.hidden = !next;
        grid.dataset.loaded = 'true';
      });
  }

  function act(id, action) {
    var card = document.getElementById('job-' + id);
    var error = card ? card.querySelector('.card-error') : null;
    var body = action === 'reject' && reason.value.trim() ? { reason: reason.value.trim() } : {};
    if (card) { card.dataset.busy = 'true'; }
    return fetch('/ui/jobs/' + encodeURIComponent(id) + '/' + action, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-asmr-page': 'live' },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (answer) { return { ok: r.ok, answer: answer }; });
    }).then(function (result) {
      if (!card) { return; }
      delete card.dataset.busy;
      if (result.ok) {
        fill(card, result.answer.card);
        error.textContent = '';
        card.dataset.done = action;
      } else {
        error.textContent = result.answer.error || 'refused';
      }
    }, function (e) {
      if (card) { delete card.dataset.busy; error.textContent = String(e); }
    });
  }

  function focus(index) {
    var all = cards();
    if (!all.length) { return; }
    current = Math.max(0, Math.min(all.length - 1, index));
    all.forEach(function (c) { c.classList.remove('current'); });
    all[current].classList.add('current');
    all[current].focus();
    all[current].scrollIntoView({ block: 'nearest' });
  }

  function chosen() {
    return cards().filter(function (c) { return c.querySelector('.pick').checked; });
  }

  function count() { selected.textContent = chosen().length + ' selected'; }

  grid.addEventListener('click', function (event) {
    var target = event.target;
    if (target.dataset && target.dataset.action && target.dataset.job) {
      act(target.dataset.job, target.dataset.action);
    }
  });
  grid.addEventListener('change', count);
  more.addEventListener('click', load);
  document.getElementById('select-all').addEventListener('click', function () {
    cards().forEach(function (c) { c.querySelector('.pick').checked = true; });
    count();
  });
  document.getElementById('select-none').addEventListener('click', function () {
    cards().forEach(function (c) { c.querySelector('.pick').checked = false; });
    count();
  });
  Array.prototype.forEach.call(document.querySelectorAll('[data-bulk]'), function (b) {
    b.addEventListener('click', function () {
      var action = b.dataset.bulk;
      chosen().reduce(function (done, card) {
        return done.then(function () { return act(card.dataset.job, action); });
      }, Promise.resolve());
    });
  });
  document.addEventListener('keydown', function (event) {
    if (event.target === reason || event.altKey || event.ctrlKey || event.metaKey) { return; }
    var all = cards();
    var card = all[current];
    switch (event.key) {
      case 'j': case 'ArrowRight': focus(current + 1); break;
      case 'k': case 'ArrowLeft': focus(current - 1); break;
      case 'a': if (card) { act(card.dataset.job, 'approve'); focus(current + 1); } break;
      case 'r': if (card) { act(card.dataset.job, 'reject'); focus(current + 1); } break;
      case 'p': if (card) { act(card.dataset.job, 'promote'); } break;
      case 'x': if (card) { var pick = card.querySelector('.pick'); pick.checked = !pick.checked; count(); } break;
      default: return;
    }
    event.preventDefault();
  });
  load();
}());
