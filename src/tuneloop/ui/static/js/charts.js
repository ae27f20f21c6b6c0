// Line charts of training curves with uPlot (vendored in static/vendor/uplot; loaded as a classic script).

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

/**
 * Draw (or update) a chart of ``series`` ({name: [values...]}) over ``xs`` in ``figure``'s .plot element.
 * The figure's ``data-points`` says how many x values it shows (the browser tests read it).
 */
export function drawLines(figure, xs, series, { xLabel = "step" } = {}) {
  const names = Object.keys(series);
  const plot = figure.querySelector(".plot");
  const data = [xs, ...names.map((n) => series[n])];
  const width = Math.max(280, plot.clientWidth || figure.clientWidth || 600);
  if (figure._chart && figure._names === names.join("|")) {
    figure._chart.setData(data);
  } else {
    figure._chart?.destroy();
    figure._chart = new window.uPlot(
      {
        width,
        height: 240,
        scales: { x: { time: false } },
        axes: [{ label: xLabel }, {}],
        series: [
          { label: xLabel },
          ...names.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
            points: { show: xs.length < 60 } })),
        ],
      },
      data,
      plot,
    );
    figure._names = names.join("|");
  }
  figure.dataset.points = String(xs.length);
  // for screen readers: the chart as one sentence (its last value of each series)
  const last = names.map((n) => {
    const value = [...series[n]].reverse().find((v) => v !== null && v !== undefined);
    return value === undefined ? null : `${n} ${Number(value).toPrecision(4)}`;
  });
  plot.setAttribute("role", "img");
  plot.setAttribute("aria-label", `${xs.length} ${xLabel}s; last: ${last.filter(Boolean).join(", ") || "none"}`);
  figure.hidden = names.length === 0;
}

/** Charts follow the page's width. */
export function resizeWith(figures) {
  const observer = new ResizeObserver(() => {
    for (const figure of figures) {
      const plot = figure.querySelector(".plot");
      if (figure._chart && plot.clientWidth) figure._chart.setSize({ width: plot.clientWidth, height: 240 });
    }
  });
  for (const figure of figures) observer.observe(figure);
}

/** Metric points by step from metrics rows: the last row of each step wins (a resumed job repeats steps). */
export function curves(rows, test) {
  const byStep = new Map();
  for (const row of rows) byStep.set(row.step, row);
  const steps = [...byStep.keys()].sort((a, b) => a - b);
  const names = [...new Set(rows.flatMap((r) => Object.keys(r).filter((k) => test(k) && r[k] !== null && r[k] !== undefined)))];
  const series = Object.fromEntries(names.map((n) => [n, steps.map((s) => byStep.get(s)[n] ?? null)]));
  return { steps, series };
}

export const isLoss = (key) => key.endsWith("loss");
export const isAccuracy = (key) => key.includes("accuracy");
export const isMargin = (key) => key.includes("margin");
