// Draws the dashboard's charts from the JSON the server rendered into the page (no inline script, no CDN).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("dashboard-data").textContent);
  const blue = "#3858e9", orange = "#e8893a", grey = "#c5cad6", green = "#2f9e6e";
  Chart.defaults.font.family = "system-ui, sans-serif";
  Chart.defaults.animation = false;

  new Chart(document.getElementById("chart-escalation"), {
    data: {
      labels: data.escalation.labels,
      datasets: [
        { type: "line", label: "Escalation rate (%)", data: data.escalation.rate, borderColor: orange,
          backgroundColor: orange, yAxisID: "rate", spanGaps: true, tension: 0.2 },
        { type: "bar", label: "Requests", data: data.escalation.requests, backgroundColor: grey, yAxisID: "count" },
      ],
    },
    options: { scales: {
      rate: { position: "left", min: 0, max: 100, title: { display: true, text: "%" } },
      count: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } },
    } },
  });

  new Chart(document.getElementById("chart-caps"), {
    type: "bar",
    data: {
      labels: data.caps.labels,
      datasets: [
        { label: "Spent", data: data.caps.spent, backgroundColor: blue },
        { label: "Reserved", data: data.caps.reserved, backgroundColor: orange },
        { label: "Remaining", data: data.caps.remaining, backgroundColor: grey },
      ],
    },
    options: { indexAxis: "y", scales: { x: { stacked: true, title: { display: true, text: "USD" } }, y: { stacked: true } } },
  });

  new Chart(document.getElementById("chart-cost"), {
    type: "bar",
    data: { labels: data.cost.labels, datasets: [{ label: "Requests", data: data.cost.counts, backgroundColor: blue }] },
    options: { scales: { x: { title: { display: true, text: "USD per request" } }, y: { beginAtZero: true } } },
  });

  new Chart(document.getElementById("chart-confidence"), {
    type: "bar",
    data: {
      labels: data.confidence.labels,
      datasets: [
        { label: "Kept (cheap answer)", data: data.confidence.kept, backgroundColor: green },
        { label: "Escalated", data: data.confidence.escalated, backgroundColor: orange },
      ],
    },
    options: { scales: { x: { stacked: true, title: { display: true, text: "confidence" } }, y: { stacked: true, beginAtZero: true } } },
  });
})();
