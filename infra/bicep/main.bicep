// The cloud side of the webhook-to-metrics bridge, with no manual step after it:
// - a Flex Consumption (FC1, Linux) Python function app running as a user-assigned identity;
// - its storage (no shared keys): the deployment container, the delivery queue (accepted
//   metrics waiting for the delivery function) and its poison queue, the retry, dead-letter and
//   retry poison queues, and the idempotency table, reached through identity-based
//   AzureWebJobsStorage__*;
// - Application Insights on Log Analytics, local auth off, telemetry authenticated with Entra;
// - a Key Vault (RBAC) holding the sink tokens, read through Key Vault references;
// - role assignments with deterministic names (modules/rbac.bicep and the modules below);
// - optionally an Azure Monitor workspace with its data collection endpoint and rule (managed
//   Prometheus), wired into the remote-write sink;
// - every app setting the code reads (bridges/settings.py SETTINGS), with the documented
//   defaults except where noted;
// - a workbook of the bridge's own metrics, the delivery queue and the synthetic checks;
// - optionally (subscribeKeyVaultEvents, after the first deployment) an Event Grid system topic
//   on the Key Vault whose expiry events go to the azure-eventgrid webhook (modules/eventgrid.bicep).
//
// Deploy with `azd up` (azure.yaml), or:
//   az deployment sub create --location <region> --template-file infra/bicep/main.bicep \
//     --parameters environmentName=<name> location=<region>
// (docs/deploying.md). tests/test_infra.py checks this template against the code.
targetScope = 'subscription'

// ------------------------------------------------------------------ environment

@minLength(1)
@maxLength(64)
@description('Environment name (azd: AZURE_ENV_NAME): names the resource group and seeds the resource names.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group to create (or update); empty: rg-<environmentName>.')
param resourceGroupName string = ''

// ------------------------------------------------------------------ function app

// Only the Flex Consumption Python versions for which every pin of requirements.txt has a wheel
// on PyPI (manylinux x86_64 or pure Python): the remote build installs wheels, and a pin without
// one would have to be compiled there (cramjam 2.14.0 and regress 2026.9.1 have none for 3.10,
// and both would need Rust; azure-functions 1.26.0 does not install on 3.13). tests/test_wheels.py
// checks each allowed version against PyPI.
@description('Python version of the Flex Consumption runtime: the one requirements.txt says the app is deployed on.')
@allowed([
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most instances the app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

// ------------------------------------------------------------------ what runs on timers

@description('CHECKS_SCHEDULE: NCRONTAB schedule (six fields, seconds first, UTC) of the synthetic checks function.')
param checksSchedule string = '0 * * * * *'

@description('SOURCES_SCHEDULE: NCRONTAB schedule of the polling function; each run polls the sources that are due.')
param sourcesSchedule string = '0 * * * * *'

@description('Synthetic checks, the object of schemas/checks.schema.json ({"checks": [...]}); becomes BRIDGE_CHECKS. Empty: none.')
param checks object = {}

@description('Polled sources, the object of schemas/sources.schema.json ({"sources": [...]}); becomes BRIDGE_SOURCES. Empty: none.')
param sources object = {}

// ------------------------------------------------------------------ sinks

@description('BRIDGE_SINKS: comma list of sinks to deliver to; empty: every sink whose settings are complete.')
param bridgeSinks string = ''

@description('DYNATRACE_URL: metrics ingest URL (https://<env>.live.dynatrace.com/api/v2/metrics/ingest); empty: no Dynatrace.')
param dynatraceUrl string = ''

@secure()
@description('Dynatrace API token with the metrics.ingest scope; kept in Key Vault. Empty: none.')
param dynatraceApiToken string = ''

@description('BETTERSTACK_URL: the metrics source\'s ingesting host; empty: no Better Stack.')
param betterstackUrl string = ''

@secure()
@description('Better Stack source token; kept in Key Vault. Empty: none.')
param betterstackSourceToken string = ''

@description('UNLEASH_URL: base URL of the Unleash server; empty: no Unleash.')
param unleashUrl string = ''

@secure()
@description('Unleash client or backend API token; kept in Key Vault. Empty: none.')
param unleashApiToken string = ''

@description('AZURE_MONITOR_RESOURCE_ID: resource the custom metrics are posted for; empty: the function app itself.')
param azureMonitorResourceId string = ''

@description('AZURE_MONITOR_REGION: that resource\'s region; empty: the deployment region.')
param azureMonitorRegion string = ''

@description('Further resource ids metrics name in azure.resource_id: the identity gets Monitoring Metrics Publisher on each.')
param metricsResourceIds array = []

@description('Deploy an Azure Monitor workspace (managed Prometheus) with its data collection endpoint and rule, and send to it.')
param deployPrometheus bool = false

// ------------------------------------------------------------------ further settings

@secure()
@description('Further secret app settings, name -> value (GITHUB_WEBHOOK_SECRET, STRIPE_WEBHOOK_SECRET, credentials that checks and sources name): each non-empty one is kept in Key Vault and set as a Key Vault reference.')
param secretSettings object = {}

@description('Further plain app settings, name -> string, applied last (BRIDGE_LOCATION, DYNATRACE_METRIC_PREFIX, ...).')
param extraSettings object = {}

// ------------------------------------------------------------------ who may connect

@description('Access restrictions: the only senders allowed to reach the app, as CIDR ranges (140.82.112.0/20) or service tags (AzureEventGrid, ActionGroup). They apply to every route, health included, so list every sender (GitHub publishes its webhook ranges as "hooks" at https://api.github.com/meta). Empty: no restriction; function keys and signatures still apply.')
param allowedSenders array = []

// ------------------------------------------------------------------ Event Grid

@description('Subscribe the bridge to the Key Vault\'s Event Grid system topic: its secrets, keys and certificates near expiry or expired reach /api/webhooks/azure-eventgrid (function key and, with EVENTGRID_WEBHOOK_SECRET in secretSettings, ?secret= in the endpoint URL). Event Grid validates the endpoint when the subscription is created, so the app must already run the code: turn this on after the first deployment (docs/deploying.md).')
param subscribeKeyVaultEvents bool = false

// ------------------------------------------------------------------ names

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var rgName = empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
var functionAppName = 'func-${resourceToken}'
var functionAppResourceId = '${subscription().id}/resourceGroups/${rgName}/providers/Microsoft.Web/sites/${functionAppName}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(toLower(uniqueString(functionAppName, resourceToken)), 7)}'

// The delivery path (BRIDGE_DELIVERY queued: the HTTP functions put accepted metrics on the
// delivery queue, the queue-triggered deliver_accepted sends them on), the retry path
// (bridges/retry/worker.py, bridges/triggers/queue.py) and the idempotency table
// (bridges/webhooks/idempotency.py): the same names as the settings' defaults. The host moves a message
// that failed maxDequeueCount times (host.json) to '<queue>-poison'. The identity's Storage Queue
// Data Contributor role (modules/rbac.bicep) is on the whole storage account, so it covers every
// queue here, the delivery queue and its poison queue included.
var deliveryQueueName = 'bridge-deliver'
var deliveryPoisonQueueName = '${deliveryQueueName}-poison'
var retryQueueName = 'bridge-retry'
var deadletterQueueName = 'bridge-deadletter'
var poisonQueueName = '${retryQueueName}-poison'
var idempotencyTableName = 'bridgeidempotency'

// The custom-metrics sink posts for this resource by default (the bridge's own metrics and the
// checks land there, and the workbook charts them).
var metricsResourceId = empty(azureMonitorResourceId) ? functionAppResourceId : azureMonitorResourceId
var metricsRegion = empty(azureMonitorRegion) ? location : azureMonitorRegion
// The function app gets its role in modules/function-app.bicep; any other target, here.
var publisherTargets = union(metricsResourceIds, empty(azureMonitorResourceId) ? [] : [
  azureMonitorResourceId
])

var secretSettingNames = map(filter(items(secretSettings), entry => !empty(entry.value)), entry => entry.key)

// ------------------------------------------------------------------ resources

resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: rgName
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    queueNames: [
      deliveryQueueName
      deliveryPoisonQueueName
      retryQueueName
      deadletterQueueName
      poisonQueueName
    ]
    tableNames: [
      idempotencyTableName
    ]
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

// The vault's name also hashes the identity's principal id, which is stable while the resource
// group lives and new once it was deleted: redeploying an environment keeps its vault, and after
// `azd down` (or deleting the resource group) the next deployment never collides with the
// soft-deleted vault, whose name Azure keeps reserved until it is purged.
module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${uniqueString(resourceToken, identity.outputs.principalId)}'
    location: location
    tags: tags
    dynatraceApiToken: dynatraceApiToken
    betterstackSourceToken: betterstackSourceToken
    unleashApiToken: unleashApiToken
    hasDynatraceApiToken: !empty(dynatraceApiToken)
    hasBetterstackSourceToken: !empty(betterstackSourceToken)
    hasUnleashApiToken: !empty(unleashApiToken)
    secretSettings: secretSettings
    secretSettingNames: secretSettingNames
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module prometheus 'modules/prometheus.bicep' = if (deployPrometheus) {
  name: 'prometheus'
  scope: rg
  params: {
    workspaceName: 'amw-${resourceToken}'
    endpointName: 'dce-${resourceToken}'
    ruleName: 'dcr-${resourceToken}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
  }
}

// Monitoring Metrics Publisher on each further resource, in that resource's resource group.
module metricsPublishers 'modules/metrics-publisher.bicep' = [for (targetId, index) in publisherTargets: {
  name: 'metrics-publisher-${index}-${resourceToken}'
  scope: resourceGroup(split(targetId, '/')[2], split(targetId, '/')[4])
  params: {
    targetId: targetId
    principalId: identity.outputs.principalId
  }
}]

// ------------------------------------------------------------------ app settings

// The host: identity-based storage (the queue trigger's connection "AzureWebJobsStorage"),
// telemetry with Entra, and the identity the Azure SDK credential uses.
var hostSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.outputs.clientId};Authorization=AAD'
}

// Every setting of bridges/settings.py SETTINGS except those the "Deploy" page (docs/deploying.md) lists
// as left unset, each with its documented default, except: the outbox and state folders (the
// package folder is read-only in Azure, so they live under /tmp), the bridge's own metrics (on, so
// the workbook has something to show) and the values that name this deployment's resources.
var bridgeSettings = {
  BRIDGE_MAX_BODY_BYTES: '20971520'
  BRIDGE_MAX_ITEMS: '100000'
  BRIDGE_OUTBOX_DIR: '/tmp/bridge/outbox'
  BRIDGE_STATE_DIR: '/tmp/bridge'
  BRIDGE_SINKS: bridgeSinks
  BRIDGE_HTTP_TIMEOUT_SECONDS: '10'
  BRIDGE_RETRY_QUEUE: retryQueueName
  BRIDGE_DELIVERY: 'queued'
  BRIDGE_DELIVERY_QUEUE: deliveryQueueName
  BRIDGE_DELIVERY_BATCH: '32'
  BRIDGE_DELIVERY_LINGER_SECONDS: '1'
  BRIDGE_DEADLETTER_QUEUE: deadletterQueueName
  BRIDGE_RETRY_BASE_SECONDS: '5'
  BRIDGE_RETRY_CAP_SECONDS: '600'
  BRIDGE_RETRY_MAX_ATTEMPTS: '10'
  BRIDGE_RETRY_MAX_AGE_SECONDS: '86400'
  BRIDGE_SELF_METRICS: 'true'
  BRIDGE_DELIVERY_DEADLINE_SECONDS: '60'
  BRIDGE_IDEMPOTENCY_TTL_SECONDS: '259200'
  BRIDGE_IDEMPOTENCY_TABLE: idempotencyTableName
  BRIDGE_OTLP_RESOURCE_ATTRIBUTES: 'service.name,service.namespace,deployment.environment'
  BRIDGE_CHECKS: empty(checks) ? '' : string(checks)
  CHECKS_SCHEDULE: checksSchedule
  BRIDGE_SOURCES: empty(sources) ? '' : string(sources)
  SOURCES_SCHEDULE: sourcesSchedule
  DYNATRACE_URL: dynatraceUrl
  DYNATRACE_METRIC_PREFIX: ''
  DYNATRACE_DEFAULT_DIMENSIONS: ''
  DYNATRACE_METADATA: 'true'
  BETTERSTACK_URL: betterstackUrl
  BETTERSTACK_FORMAT: 'msgpack'
  BETTERSTACK_MAX_REQUESTS_PER_MINUTE: '500'
  UNLEASH_URL: unleashUrl
  UNLEASH_API: 'auto'
  UNLEASH_APP_NAME: 'metrics-bridge'
  AZURE_MONITOR_RESOURCE_ID: metricsResourceId
  AZURE_MONITOR_REGION: metricsRegion
  AZURE_MONITOR_NAMESPACE: 'Bridge'
  AZURE_MONITOR_DIMENSION_PRIORITY: ''
  PROMETHEUS_REMOTE_WRITE_URL: deployPrometheus ? prometheus.outputs.remoteWriteUrl : ''
  PROMETHEUS_MAX_SAMPLES_PER_REQUEST: '2000'
  AZURE_CLIENT_ID: identity.outputs.clientId
}

// A token setting exists only when its token was given: a reference to a secret that does not
// exist would stay unresolved, and the bridge refuses to start on one.
var tokenSettings = union(empty(dynatraceApiToken) ? {} : {
  DYNATRACE_API_TOKEN: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.dynatraceApiTokenUri})'
}, empty(betterstackSourceToken) ? {} : {
  BETTERSTACK_SOURCE_TOKEN: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.betterstackSourceTokenUri})'
}, empty(unleashApiToken) ? {} : {
  UNLEASH_API_TOKEN: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.unleashApiTokenUri})'
})

var appSettings = union(hostSettings, bridgeSettings, tokenSettings, keyVault.outputs.settingReferences, extraSettings)

module app 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  // The roles on storage and Key Vault first: the host starts with these settings, and a Key
  // Vault reference resolved before its role exists stays unresolved until the next change.
  dependsOn: [
    rbac
  ]
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    allowedSenders: allowedSenders
    location: location
    tags: tags
    serviceName: 'api'
    identityId: identity.outputs.id
    principalId: identity.outputs.principalId
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    pythonVersion: pythonVersion
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    appSettings: appSettings
  }
}

// The Key Vault events the built-in azure-eventgrid rules chart (mappings/azure-eventgrid.yaml,
// rule "key vault expiry"), delivered to its webhook route in the Event Grid schema.
var keyVaultExpiryEventTypes = [
  'Microsoft.KeyVault.SecretNearExpiry'
  'Microsoft.KeyVault.SecretExpired'
  'Microsoft.KeyVault.KeyNearExpiry'
  'Microsoft.KeyVault.KeyExpired'
  'Microsoft.KeyVault.CertificateNearExpiry'
  'Microsoft.KeyVault.CertificateExpired'
]

module keyVaultEvents 'modules/eventgrid.bicep' = if (subscribeKeyVaultEvents) {
  name: 'keyvault-events'
  scope: rg
  params: {
    name: 'evgt-${resourceToken}'
    location: location
    tags: tags
    keyVaultName: keyVault.outputs.name
    functionAppName: app.outputs.name
    webhookPath: 'api/webhooks/azure-eventgrid'
    includedEventTypes: keyVaultExpiryEventTypes
    sharedSecret: contains(secretSettings, 'EVENTGRID_WEBHOOK_SECRET') ? secretSettings.EVENTGRID_WEBHOOK_SECRET : ''
  }
}

module workbook 'modules/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    name: guid(subscription().id, rgName, functionAppName, 'bridge-workbook')
    location: location
    tags: tags
    metricsResourceId: metricsResourceId
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    sourceId: app.outputs.id
  }
}

// ------------------------------------------------------------------ outputs

var functionAppUrl = 'https://${app.outputs.defaultHostName}'

@description('Base URL of the function app; HTTP functions are under /api (a function key is needed, except for /api/health).')
output functionAppUrl string = functionAppUrl

@description('Canonical metrics in: POST JSON, NDJSON or MessagePack.')
output metricsUrl string = '${functionAppUrl}/api/metrics'

@description('Dynatrace metric lines in (what a Dynatrace client would post to /api/v2/metrics/ingest).')
output dynatraceIngestUrl string = '${functionAppUrl}/api/v2/metrics/ingest'

@description('Prometheus remote_write in (url of a remote_write block).')
output remoteWriteUrl string = '${functionAppUrl}/api/v1/write'

@description('Webhook URL per built-in source (mappings/): give these to the third parties, with a function key.')
output webhookUrls object = {
  alertmanager: '${functionAppUrl}/api/webhooks/alertmanager'
  'azure-devops': '${functionAppUrl}/api/webhooks/azure-devops'
  'azure-eventgrid': '${functionAppUrl}/api/webhooks/azure-eventgrid'
  'azure-monitor-alerts': '${functionAppUrl}/api/webhooks/azure-monitor-alerts'
  bitbucket: '${functionAppUrl}/api/webhooks/bitbucket'
  github: '${functionAppUrl}/api/webhooks/github'
  gitlab: '${functionAppUrl}/api/webhooks/gitlab'
  grafana: '${functionAppUrl}/api/webhooks/grafana'
  pagerduty: '${functionAppUrl}/api/webhooks/pagerduty'
  sentry: '${functionAppUrl}/api/webhooks/sentry'
  stripe: '${functionAppUrl}/api/webhooks/stripe'
}

@description('Client id of the user-assigned identity the app runs as (AZURE_CLIENT_ID).')
output identityClientId string = identity.outputs.clientId

@description('Principal (object) id of that identity, to grant it roles elsewhere.')
output identityPrincipalId string = identity.outputs.principalId

@description('Resource the custom metrics are posted for (AZURE_MONITOR_RESOURCE_ID).')
output metricsResourceId string = metricsResourceId

@description('Managed Prometheus: the data collection rule\'s ingestion URL the bridge writes to; empty without deployPrometheus.')
output prometheusIngestionUrl string = deployPrometheus ? prometheus.outputs.remoteWriteUrl : ''

@description('The workbook of the bridge\'s metrics.')
output workbookId string = workbook.outputs.id

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
