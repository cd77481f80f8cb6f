// Optional managed Prometheus: an Azure Monitor workspace with its own data collection endpoint
// and rule (stream Microsoft-PrometheusMetrics). The rule's ingestion URL is what the
// remote-write sink posts to (PROMETHEUS_REMOTE_WRITE_URL); the identity gets Monitoring Metrics
// Publisher on the rule, not on the workspace.
@description('Azure Monitor workspace name.')
param workspaceName string

@description('Data collection endpoint name.')
param endpointName string

@description('Data collection rule name.')
param ruleName string

@description('Region of the three.')
param location string

@description('Tags of the three.')
param tags object = {}

@description('Principal (object) id of the identity that writes.')
param principalId string

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
var destinationName = 'bridgeWorkspace'
var stream = 'Microsoft-PrometheusMetrics'

resource workspace 'Microsoft.Monitor/accounts@2023-04-03' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {}
}

resource endpoint 'Microsoft.Insights/dataCollectionEndpoints@2023-03-11' = {
  name: endpointName
  location: location
  tags: tags
  properties: {
    description: 'Ingestion endpoint of the metrics bridge remote-write sink'
    networkAcls: {
      publicNetworkAccess: 'Enabled'
    }
  }
}

resource rule 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: ruleName
  location: location
  tags: tags
  properties: {
    description: 'Prometheus remote-write from the metrics bridge to its Azure Monitor workspace'
    dataCollectionEndpointId: endpoint.id
    dataSources: {}
    destinations: {
      monitoringAccounts: [
        {
          accountResourceId: workspace.id
          name: destinationName
        }
      ]
    }
    dataFlows: [
      {
        streams: [
          stream
        ]
        destinations: [
          destinationName
        ]
      }
    ]
  }
}

resource writer 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(rule.id, principalId, monitoringMetricsPublisher)
  scope: rule
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output workspaceId string = workspace.id
output ruleId string = rule.id
output prometheusQueryEndpoint string = workspace.properties.metrics.prometheusQueryEndpoint
@description('The rule\'s full remote-write ingestion URL (a bare endpoint host answers 404).')
output remoteWriteUrl string = '${endpoint.properties.metricsIngestion.endpoint}/dataCollectionRules/${rule.properties.immutableId}/streams/${stream}/api/v1/write?api-version=2023-04-24'
