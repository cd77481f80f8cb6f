// The OpenTelemetry JS SDK as a real OTLP/HTTP client (JSON encoding), for tests/test_input_otlp.py.
//
// Usage: node otel-js-export.js <folder holding node_modules/@opentelemetry> (.peers/otel-js)
//
// Two MeterProviders (service.name shop-cumulative and shop-delta), each with the OTLP/HTTP
// exporter at the temporality its name says, record known values on a counter, an up-down
// counter, a histogram and an observable gauge, then force-flush. The exporter takes its URL and
// headers from the environment, as a deployed SDK does (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
// OTEL_EXPORTER_OTLP_HEADERS). Prints one JSON document: per provider, the export results and the
// data points the SDK exported, so the test compares the sink's metrics with what was recorded.
'use strict';

const path = require('node:path');

const modules = path.join(path.resolve(process.argv[2] || '.'), 'node_modules');
const need = (name) => require(path.join(modules, name));
const { MeterProvider, PeriodicExportingMetricReader, AggregationTemporality } = need('@opentelemetry/sdk-metrics');
const { OTLPMetricExporter, AggregationTemporalityPreference } = need('@opentelemetry/exporter-metrics-otlp-http');
const { resourceFromAttributes } = need('@opentelemetry/resources');

// The exporter, with what it was given to send and how each export ended noted on the way.
class Recording {
    constructor(inner) {
        this.inner = inner;
        this.exports = [];
    }

    export(metrics, done) {
        this.inner.export(metrics, (result) => {
            this.exports.push({ code: result.code, error: result.error ? String(result.error) : null, metrics });
            done(result);
        });
    }

    selectAggregationTemporality(kind) {
        return this.inner.selectAggregationTemporality(kind);
    }

    selectAggregation(kind) {
        return this.inner.selectAggregation(kind);
    }

    forceFlush() {
        return this.inner.forceFlush();
    }

    shutdown() {
        return this.inner.shutdown();
    }
}

function plain(metrics) {
    const out = [];
    for (const scope of metrics.scopeMetrics) {
        for (const metric of scope.metrics) {
            out.push({
                name: metric.descriptor.name,
                temporality: metric.aggregationTemporality === AggregationTemporality.DELTA ? 'delta' : 'cumulative',
                points: metric.dataPoints.map((point) => ({ attributes: point.attributes, value: point.value })),
            });
        }
    }
    return out;
}

async function record(temporality) {
    const exporter = new Recording(new OTLPMetricExporter({
        temporalityPreference: temporality === 'delta'
            ? AggregationTemporalityPreference.DELTA : AggregationTemporalityPreference.CUMULATIVE,
    }));
    const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3600000 });
    const provider = new MeterProvider({
        resource: resourceFromAttributes({ 'service.name': `shop-${temporality}` }),
        readers: [reader],
    });
    const meter = provider.getMeter('shop.meter');
    meter.createCounter('orders', { unit: '{order}', description: 'Orders placed' }).add(3, { region: 'eu' });
    const inflight = meter.createUpDownCounter('inflight');
    inflight.add(5);
    inflight.add(-7);
    const latency = meter.createHistogram('latency', { unit: 's' });
    for (const value of [0.003, 0.2, 7.5]) {
        latency.record(value);
    }
    meter.createObservableGauge('temperature').addCallback((result) => result.observe(21.5, { room: 'a' }));
    await provider.forceFlush();
    await provider.shutdown();
    return exporter.exports.map((done) => ({ code: done.code, error: done.error, metrics: plain(done.metrics) }));
}

async function main() {
    const recorded = {};
    for (const temporality of ['cumulative', 'delta']) {
        recorded[temporality] = await record(temporality);
    }
    process.stdout.write(JSON.stringify(recorded) + '\n');
}

main().catch((error) => {
    console.error(error);
    process.exit(1);
});
