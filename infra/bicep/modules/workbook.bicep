// The operator's picture: an Azure Monitor workbook charting the bridge's own custom metrics
// (namespace Bridge, per sink: accepted, delivered, rejected, retried, dead-lettered, delivery
// seconds) and the synthetic checks (up, duration, certificate days left, per check) of the
// resource the custom-metrics sink posts for, and the delivery queue (depth, oldest message's
// age, poison depth) from the delivery function's "delivery queue" trace records in Application
// Insights. The layout is ../bridge-workbook.json, whose placeholders are filled in here.
@description('Workbook resource name: a GUID.')
param name string

@description('Title shown in the portal.')
param displayName string = 'Metrics bridge'

@description('Region of the workbook.')
param location string

@description('Tags of the workbook.')
param tags object = {}

@description('Resource the bridge posts its custom metrics for (AZURE_MONITOR_RESOURCE_ID).')
param metricsResourceId string

@description('Application Insights component the app logs to: the delivery queue charts query its traces.')
param applicationInsightsId string

@description('Resource whose Workbooks blade lists this workbook (the function app).')
param sourceId string

// 'microsoft.web/sites' from '/subscriptions/.../providers/Microsoft.Web/sites/<name>'.
var metricsResourceType = toLower(join(take(split(substring(metricsResourceId, indexOf(toLower(metricsResourceId), '/providers/') + length('/providers/')), '/'), 2), '/'))
var layout = loadTextContent('../bridge-workbook.json')
var serializedData = replace(replace(replace(layout, '__METRICS_RESOURCE_ID__', metricsResourceId), '__METRICS_RESOURCE_TYPE__', metricsResourceType), '__APPLICATION_INSIGHTS_ID__', applicationInsightsId)

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: name
  location: location
  tags: union(tags, {
    'hidden-title': displayName
  })
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    version: 'Notebook/1.0'
    serializedData: serializedData
    sourceId: toLower(sourceId)
  }
}

output id string = workbook.id
