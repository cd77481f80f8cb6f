// The Flex Consumption plan (FC1, Linux) and the Python function app, running as the
// user-assigned identity, with its app settings and the Monitoring Metrics Publisher role on the
// app itself (the bridge posts its own custom metrics for this resource by default).
@description('Function app name (also the host name prefix).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Region of the plan and the app; it must offer Flex Consumption.')
param location string

@description('Tags of both; the app also gets azd-service-name.')
param tags object = {}

@description('azd service this app hosts (azure.yaml).')
param serviceName string = 'api'

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Principal (object) id of that identity.')
param principalId string

@description('Blob container URL Flex Consumption deploys the package to.')
param deploymentContainerUrl string

@description('Python version of the runtime.')
param pythonVersion string

@description('Memory of each instance, in MB.')
param instanceMemoryMB int = 2048

@description('Most instances the app scales out to.')
param maximumInstanceCount int = 100

@description('Every app setting (name -> string); the template owns them all.')
param appSettings object

@description('Senders allowed to connect (CIDR ranges or service tags); empty: everyone.')
param allowedSenders array = []

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    // Only what Flex Consumption takes in siteConfig: the runtime, scale and deployment live in
    // functionAppConfig below, and Flex refuses (or ignores) the App Service switches such as
    // Always On, FTPS, 32-bit workers and the *FxVersion runtime strings (tests/test_infra.py
    // lists them).
    siteConfig: {
      minTlsVersion: '1.2'
      // A range holds a '/'; anything else is a service tag such as AzureEventGrid.
      ipSecurityRestrictions: [for (sender, index) in allowedSenders: {
        name: 'sender-${index}'
        priority: 100 + index
        action: 'Allow'
        ipAddress: sender
        tag: contains(sender, '/') ? 'Default' : 'ServiceTag'
      }]
      ipSecurityRestrictionsDefaultAction: empty(allowedSenders) ? 'Allow' : 'Deny'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: app
  name: 'appsettings'
  properties: appSettings
}

resource selfMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(app.id, principalId, monitoringMetricsPublisher)
  scope: app
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output id string = app.id
output name string = app.name
output defaultHostName string = app.properties.defaultHostName
