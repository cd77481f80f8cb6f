// Tiny launcher for a real unleash-server used by tests/peers/unleash.py.
//
// Usage: node start-unleash.js <unleash-install-dir> <port> [customMetrics]
//   <unleash-install-dir>  folder holding node_modules/unleash-server (e.g. .peers/unleash-7.5.1)
//   <port>                 loopback port to listen on (host is always 127.0.0.1)
//   customMetrics          pass to enable the 7.x experimental flag `customMetrics`
//
// Database and tokens come from the environment (DATABASE_URL, DATABASE_SSL=false,
// INIT_BACKEND_API_TOKENS / INIT_CLIENT_API_TOKENS, INIT_ADMIN_API_TOKENS).
// No SIGTERM handler here on purpose: unleash-server installs its own.
'use strict';

const path = require('node:path');
const { pathToFileURL } = require('node:url');

async function main() {
    const [dir, portArg, ...flags] = process.argv.slice(2);
    if (!dir || !portArg) {
        console.error('usage: node start-unleash.js <unleash-install-dir> <port> [customMetrics]');
        process.exit(2);
    }
    const entry = path.join(
        path.resolve(dir),
        'node_modules',
        'unleash-server',
        'dist',
        'lib',
        'server-impl.js',
    );
    const { start } = await import(pathToFileURL(entry).href);
    const experimentalFlags = {};
    if (flags.includes('customMetrics')) {
        experimentalFlags.customMetrics = true;
    }
    await start({
        db: { ssl: false },
        server: {
            host: '127.0.0.1',
            port: Number(portArg),
            serverMetrics: true,
        },
        versionCheck: { enable: false },
        sendTelemetry: false,
        experimental: { flags: experimentalFlags },
    });
    console.log(`unleash-server listening on http://127.0.0.1:${portArg}`);
}

main().catch((err) => {
    console.error('start-unleash failed:', err && err.stack ? err.stack : err);
    process.exit(1);
});
