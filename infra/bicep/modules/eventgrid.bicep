// Optional (main.bicep's subscribeKeyVaultEvents): an Event Grid system topic on the template's
// Key Vault and an event subscription delivering its near-expiry and expired events to the
// bridge's built-in azure-eventgrid webhook source (mappings/azure-eventgrid.yaml), in the Event
// Grid schema. The endpoint URL carries the host's default function key (?code=, checked by the
// Functions host) and, when one is given, the shared secret (?secret=, checked by the bridge's
// shared-secret scheme against EVENTGRID_WEBHOOK_SECRET): Event Grid does not sign deliveries,
// and a secret query parameter is its documented protection for a webhook
// (learn.microsoft.com/azure/event-grid/security-authentication). ARM keeps the endpoint URL
// write-only; nothing here is an output.
//
// Creating the subscription makes Event Grid send its validation request to that URL at once
// (webhook-event-delivery: answered within 30 s, or the subscription fails), so the app must be
// running with the code deployed: turn this on after the first deployment (docs/deploying.md).
@description('System topic name.')
param name string

@description('Region of the system topic: the vault\'s.')
param location string

@description('Tags of the system topic.')
param tags object = {}

@description('The Key Vault whose events are delivered (this resource group).')
param keyVaultName string

@description('The function app that receives them (this resource group).')
param functionAppName string

@description('Route of the webhook, after https://<host>/: api/webhooks/azure-eventgrid.')
param webhookPath string

@description('Event types delivered: the Key Vault near-expiry and expired events the built-in rules chart.')
param includedEventTypes array

@secure()
@description('The shared secret sent as ?secret= (EVENTGRID_WEBHOOK_SECRET); empty: none, the function key alone.')
param sharedSecret string = ''

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource app 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

// The host's keys; functionKeys.default is the default function key, which the Functions host
// creates on its first start.
resource appHost 'Microsoft.Web/sites/host@2024-04-01' existing = {
  parent: app
  name: 'default'
}

var secretQuery = empty(sharedSecret) ? '' : '&secret=${uriComponent(sharedSecret)}'

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: name
  location: location
  tags: tags
  properties: {
    source: vault.id
    topicType: 'Microsoft.KeyVault.vaults'
  }
}

resource webhookSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: topic
  name: 'bridge-webhook'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: includedEventTypes
    }
    // The default function key and, when there is one, the shared secret.
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${app.properties.defaultHostName}/${webhookPath}?code=${uriComponent(appHost.listKeys().functionKeys.default)}${secretQuery}'
      }
    }
  }
}
