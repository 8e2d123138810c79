// The topology neighbourhood of an incident as an SVG graph, with a small layered layout of
// our own: the root cause on top, then the CIs by their distance from it (hosts, then VMs,
// then applications), and the impacted business services at the bottom. Within a layer,
// nodes are ordered by the mean position of their neighbours above (two sweeps), which is
// enough to keep a storm's fan-out readable. Wide layers wrap into several rows.

const SVG = 'http://www.w3.org/2000/svg';
const NODE_W = 150;
const NODE_H = 44;
const GAP_X = 18;
const GAP_Y = 58;
const MAX_PER_ROW = 8;

function el(name, attrs = {}, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function short(s, n) {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

/** Assigns each node a layer: distance from the root over the edges, services last. */
export function layers(picture) {
  const adj = new Map(picture.nodes.map((n) => [n.id, []]));
  for (const e of picture.edges) {
    if (adj.has(e.from) && adj.has(e.to)) {
      adj.get(e.from).push(e.to);
      adj.get(e.to).push(e.from);
    }
  }
  const layer = new Map();
  const roots = picture.nodes.filter((n) => n.role === 'root').map((n) => n.id);
  const queue = roots.map((id) => [id, 0]);
  for (const id of roots) layer.set(id, 0);
  while (queue.length) {
    const [id, d] = queue.shift();
    for (const o of adj.get(id) || []) {
      const node = picture.nodes.find((n) => n.id === o);
      if (layer.has(o) || (node && node.role === 'service')) continue;
      layer.set(o, d + 1);
      queue.push([o, d + 1]);
    }
  }
  let deepest = 0;
  for (const n of picture.nodes) {
    if (n.role === 'service') continue;
    if (!layer.has(n.id)) layer.set(n.id, roots.length ? 1 : 0);
    deepest = Math.max(deepest, layer.get(n.id));
  }
  for (const n of picture.nodes) if (n.role === 'service') layer.set(n.id, deepest + 1);
  return { layer, adj };
}

/** Positions: {id -> {x, y}}, plus the drawing's size. */
export function layout(picture) {
  const { layer, adj } = layers(picture);
  const byLayer = [];
  for (const n of picture.nodes) {
    const l = layer.get(n.id);
    (byLayer[l] = byLayer[l] || []).push(n.id);
  }
  const order = new Map();
  byLayer.forEach((ids) => ids && ids.forEach((id, i) => order.set(id, i)));
  for (let sweep = 0; sweep < 2; sweep++) {
    for (let l = 1; l < byLayer.length; l++) {
      const ids = byLayer[l];
      if (!ids) continue;
      const bary = new Map(ids.map((id) => {
        const above = (adj.get(id) || []).filter((o) => layer.get(o) < l);
        const mean = above.length ? above.reduce((s, o) => s + order.get(o), 0) / above.length : order.get(id);
        return [id, mean];
      }));
      ids.sort((a, b) => bary.get(a) - bary.get(b) || a.localeCompare(b));
      ids.forEach((id, i) => order.set(id, i));
    }
  }
  // Rows: each layer wrapped at MAX_PER_ROW.
  const rows = [];
  for (const ids of byLayer) {
    if (!ids) continue;
    for (let i = 0; i < ids.length; i += MAX_PER_ROW) rows.push(ids.slice(i, i + MAX_PER_ROW));
  }
  const widest = Math.max(1, ...rows.map((r) => r.length));
  const width = widest * (NODE_W + GAP_X) + GAP_X;
  const pos = new Map();
  rows.forEach((ids, r) => {
    const rowWidth = ids.length * (NODE_W + GAP_X) - GAP_X;
    const x0 = (width - rowWidth) / 2;
    ids.forEach((id, i) => pos.set(id, { x: x0 + i * (NODE_W + GAP_X), y: GAP_Y / 2 + r * (NODE_H + GAP_Y) }));
  });
  const height = rows.length * (NODE_H + GAP_Y);
  return { pos, width, height };
}

/** Draws `picture` (the `/topology` answer) into `container`, replacing what was there. */
export function draw(container, picture) {
  if (!picture.nodes.length) {
    const p = document.createElement('p');
    p.className = 'muted';
    p.textContent = 'No CMDB CI is known for this incident’s alerts, so there is no topology to draw.';
    container.replaceChildren(p);
    return;
  }
  const { pos, width, height } = layout(picture);
  const services = picture.nodes.filter((n) => n.role === 'service').map((n) => n.id);
  const svg = el('svg', {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: 'img',
    'aria-labelledby': 'topo-title topo-desc',
    class: 'topology',
  });
  svg.append(el('title', { id: 'topo-title' }, `Topology of ${picture.incident}`));
  svg.append(el('desc', { id: 'topo-desc' },
    `Root cause ${picture.root || 'unknown'}; ${picture.affected_total} affected CIs; ` +
    `impacted services: ${services.join(', ') || 'none'}.`));
  const defs = el('defs');
  const marker = el('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
  marker.append(el('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }));
  defs.append(marker);
  svg.append(defs);

  const edges = el('g', { class: 'edges' });
  for (const e of picture.edges) {
    const a = pos.get(e.from);
    const b = pos.get(e.to);
    if (!a || !b) continue;
    // From the dependent to what it depends on: the arrow points at the cause's side.
    const down = a.y >= b.y;
    const x1 = a.x + NODE_W / 2;
    const y1 = down ? a.y : a.y + NODE_H;
    const x2 = b.x + NODE_W / 2;
    const y2 = down ? b.y + NODE_H : b.y;
    const mid = (y1 + y2) / 2;
    const path = el('path', {
      d: a.y === b.y
        ? `M${x1},${a.y + NODE_H / 2} C${x1},${a.y + NODE_H + 30} ${x2},${b.y + NODE_H + 30} ${x2},${b.y + NODE_H}`
        : `M${x1},${y1} C${x1},${mid} ${x2},${mid} ${x2},${y2}`,
      class: `edge rel-${e.relation}`,
      'marker-end': 'url(#arrow)',
    });
    path.append(el('title', {}, `${e.from} ${e.relation} ${e.to}`));
    edges.append(path);
  }
  svg.append(edges);

  const nodes = el('g', { class: 'nodes' });
  for (const n of picture.nodes) {
    const p = pos.get(n.id);
    const g = el('g', { class: `node ${n.role}`, transform: `translate(${p.x},${p.y})`, 'data-ci': n.id });
    g.append(el('title', {}, `${n.id} (${n.kind}, ${n.role})${n.alerts ? `: ${n.alerts} alert(s)` : ''}`));
    g.append(el('rect', { width: NODE_W, height: NODE_H, rx: 7 }));
    g.append(el('text', { x: 10, y: 18, class: 'node-id' }, short(n.name || n.id, 19)));
    const kind = n.role === 'root' ? `ROOT CAUSE · ${n.kind}` : n.kind;
    g.append(el('text', { x: 10, y: 35, class: 'node-kind' }, short(kind, 24)));
    if (n.alerts) {
      g.append(el('circle', { cx: NODE_W - 14, cy: 14, r: 10, class: 'badge' }));
      g.append(el('text', { x: NODE_W - 14, y: 18, class: 'badge-text', 'text-anchor': 'middle' }, n.alerts > 99 ? '99+' : String(n.alerts)));
    }
    nodes.append(g);
  }
  svg.append(nodes);

  const legend = document.createElement('p');
  legend.className = 'legend';
  const parts = [['root', 'root cause'], ['affected', 'alerting CI'], ['context', 'on the path'], ['service', 'business service']];
  for (const [cls, text] of parts) {
    const s = document.createElement('span');
    s.className = `key ${cls}`;
    s.textContent = text;
    legend.append(s);
  }
  if (picture.truncated) {
    const s = document.createElement('span');
    s.textContent = `showing ${picture.nodes.length} nodes of a larger neighbourhood (${picture.affected_total} affected CIs)`;
    legend.append(s);
  }
  const scroller = document.createElement('div');
  scroller.className = 'topology-scroll';
  scroller.append(svg);
  container.replaceChildren(legend, scroller);
}
