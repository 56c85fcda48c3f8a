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

  function show(snapshot) {
    var figures = snapshot.figures || {};
    Object.keys(figures).forEach(function (name) {
      var target = element(name);
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
